// PNG writer and reader through libspng (and zlib), see png.hpp.
#include "io/png.hpp"

#include <spng.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <new>
#include <stdexcept>

#include <fmt/format.h>

namespace ab {

namespace {

[[noreturn]] void png_fail(const std::string& what) { throw std::runtime_error("PNG: " + what); }

struct SpngFree {
  void operator()(spng_ctx* ctx) const { spng_ctx_free(ctx); }
};
using Spng = std::unique_ptr<spng_ctx, SpngFree>;

constexpr size_t kMetaChunkBytes = size_t{1} << 20;  // one text / ICC chunk, inflated
constexpr size_t kMetaCacheBytes = size_t{4} << 20;  // all of them
constexpr uint64_t kOtherChunkBytes = uint64_t{16} << 20;

// libspng's error codes in words; the ones a damaged or hostile file gives get a plainer sentence.
std::string describe(int err) {
  switch (err) {
    case SPNG_IO_EOF:
    case SPNG_IO_ERROR:
    case SPNG_EOF:
      return "the file is truncated (it ends before the image data or the IEND chunk)";
    case SPNG_ECHUNK_LIMITS:
      return fmt::format("the metadata chunks exceed this reader's limits ({} MiB inflated per chunk, {} MiB in all)",
                         kMetaChunkBytes >> 20, kMetaCacheBytes >> 20);
    case SPNG_ECHUNK_POS:
      return "a chunk is out of order (IHDR comes first, PLTE before the image data, IDAT before IEND)";
    case SPNG_EIDAT_TOO_SHORT:
      return "the image data is shorter than the image";
    case SPNG_EIDAT_STREAM:
    case SPNG_EZLIB:
      return "the image data is not a valid zlib stream";
    default:
      return spng_strerror(err);
  }
}

void check(int err) {
  if (err == SPNG_EMEM) throw std::bad_alloc();
  if (err != 0) png_fail(describe(err));
}

uint32_t be32(const uint8_t* p) {
  return (static_cast<uint32_t>(p[0]) << 24) | (static_cast<uint32_t>(p[1]) << 16) | (static_cast<uint32_t>(p[2]) << 8) |
         p[3];
}

int channels_of(uint8_t color_type) {
  switch (color_type) {
    case SPNG_COLOR_TYPE_TRUECOLOR: return 3;
    case SPNG_COLOR_TYPE_GRAYSCALE_ALPHA: return 2;
    case SPNG_COLOR_TYPE_TRUECOLOR_ALPHA: return 4;
    default: return 1;  // gray, palette
  }
}

// Bytes of filtered scanlines the header declares: a filter byte before each row, of each Adam7
// pass when the image is interlaced.
uint64_t declared_raw_bytes(const spng_ihdr& h) {
  const uint64_t bits = static_cast<uint64_t>(channels_of(h.color_type)) * h.bit_depth;
  auto rows = [&](uint64_t w, uint64_t n) { return w == 0 || n == 0 ? 0 : n * (1 + (w * bits + 7) / 8); };
  if (h.interlace_method == SPNG_INTERLACE_NONE) return rows(h.width, h.height);
  static constexpr int kPass[7][4] = {{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4},
                                      {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}};  // x0, y0, dx, dy
  uint64_t total = 0;
  for (const auto& p : kPass) {
    const uint64_t w = h.width > static_cast<uint32_t>(p[0]) ? (h.width - p[0] + p[2] - 1) / p[2] : 0;
    const uint64_t n = h.height > static_cast<uint32_t>(p[1]) ? (h.height - p[1] + p[3] - 1) / p[3] : 0;
    total += rows(w, n);
  }
  return total;
}

// libspng inflates only as much image data as the rows need and drops the rest unread, so it never
// sees a stream that goes on past the image (a decompression bomb behind a small header) or, most
// of the time, the stream's Adler-32. This reads the IDAT chunks (whose layout and CRCs libspng has
// checked) through zlib once more, into a fixed 64 KiB window, and stops as soon as the output
// passes what the header declares: the work is bounded by the declared size, not by the file.
void check_image_stream(const std::vector<uint8_t>& b, uint64_t expected) {
  z_stream z{};
  if (inflateInit(&z) != Z_OK) throw std::bad_alloc();
  const std::unique_ptr<z_stream, int (*)(z_stream*)> end(&z, inflateEnd);
  std::vector<uint8_t> window(size_t{1} << 16);
  uint64_t total = 0;
  int ret = Z_OK;
  for (size_t pos = 8; ret != Z_STREAM_END && pos + 12 <= b.size();) {
    const uint32_t len = be32(&b[pos]);
    if (len > b.size() - pos - 12) break;
    const uint8_t* type = &b[pos + 4];
    if (std::memcmp(type, "IEND", 4) == 0) break;
    if (std::memcmp(type, "IDAT", 4) == 0) {
      z.next_in = const_cast<uint8_t*>(&b[pos + 8]);
      z.avail_in = len;
      do {
        z.next_out = window.data();
        z.avail_out = static_cast<uInt>(window.size());
        ret = inflate(&z, Z_NO_FLUSH);
        total += window.size() - z.avail_out;
        if (total > expected) png_fail(fmt::format("the image data inflates beyond the {} bytes expected", expected));
        if (ret == Z_STREAM_END || ret == Z_BUF_ERROR) break;  // Z_BUF_ERROR: this chunk is used up
        if (ret != Z_OK)
          png_fail(fmt::format("the image data is not a valid zlib stream ({})", z.msg ? z.msg : "inflate failed"));
      } while (z.avail_in > 0 || z.avail_out == 0);
    }
    pos += 12 + static_cast<size_t>(len);
  }
  if (ret != Z_STREAM_END || total < expected)
    png_fail(fmt::format("the image data ends before its zlib stream does ({} of {} bytes)", total, expected));
}

}  // namespace

uint64_t max_png_file_bytes(int64_t max_side) {
  const uint64_t side = static_cast<uint64_t>(std::clamp<int64_t>(max_side, 1, kMaxPngSide));
  // 16-bit RGBA, stored uncompressed (deflate adds 5 bytes per 64 KiB block), plus other chunks.
  const uint64_t raw = side * (1 + 8 * side);
  return raw + raw / 8192 + kOtherChunkBytes;
}

std::vector<uint8_t> encode_png_gray(const GrayImage& img) {
  if (img.width <= 0 || img.height <= 0 || img.width > (1 << 24) || img.height > (1 << 24))
    throw std::invalid_argument(fmt::format("PNG: bad image size {} x {}", img.width, img.height));
  if (static_cast<int64_t>(img.pixels.size()) != img.width * img.height)
    throw std::invalid_argument(
        fmt::format("PNG: {} pixels for a {} x {} image", img.pixels.size(), img.width, img.height));
  const Spng ctx(spng_ctx_new(SPNG_CTX_ENCODER));
  if (!ctx) throw std::bad_alloc();
  check(spng_set_option(ctx.get(), SPNG_ENCODE_TO_BUFFER, 1));
  spng_ihdr ihdr{};
  ihdr.width = static_cast<uint32_t>(img.width);
  ihdr.height = static_cast<uint32_t>(img.height);
  ihdr.bit_depth = 8;
  ihdr.color_type = SPNG_COLOR_TYPE_GRAYSCALE;
  check(spng_set_ihdr(ctx.get(), &ihdr));
  check(spng_encode_image(ctx.get(), img.pixels.data(), img.pixels.size(), SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE));
  size_t len = 0;
  int err = 0;
  const std::unique_ptr<void, void (*)(void*)> buf(spng_get_png_buffer(ctx.get(), &len, &err), std::free);
  if (!buf) check(err ? err : SPNG_EMEM);
  const auto* p = static_cast<const uint8_t*>(buf.get());
  return std::vector<uint8_t>(p, p + len);
}

void write_png_gray(const std::string& path, const GrayImage& image) {
  const std::vector<uint8_t> bytes = encode_png_gray(image);
  std::ofstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(fmt::format("cannot write '{}'", path));
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error(fmt::format("writing '{}' failed", path));
}

GrayImage decode_png_gray(const std::vector<uint8_t>& b, int64_t max_side) {
  max_side = std::clamp<int64_t>(max_side, 1, kMaxPngSide);
  if (b.size() < 8) png_fail(fmt::format("not a PNG file ({} bytes, shorter than the PNG signature)", b.size()));
  if (b.size() > max_png_file_bytes(max_side))
    png_fail(fmt::format("the file is larger than the {} bytes a PNG of at most {} x {} pixels takes",
                         max_png_file_bytes(max_side), max_side, max_side));
  static constexpr uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (std::memcmp(b.data(), kSignature, 8) != 0) png_fail("not a PNG file (its signature is wrong)");
  const Spng ctx(spng_ctx_new(0));
  if (!ctx) throw std::bad_alloc();
  check(spng_set_image_limits(ctx.get(), static_cast<uint32_t>(max_side), static_cast<uint32_t>(max_side)));
  check(spng_set_chunk_limits(ctx.get(), kMetaChunkBytes, kMetaCacheBytes));
  check(spng_set_png_buffer(ctx.get(), b.data(), b.size()));
  spng_ihdr ihdr{};
  const int err = spng_get_ihdr(ctx.get(), &ihdr);
  if ((err == SPNG_EUSER_WIDTH || err == SPNG_EUSER_HEIGHT) && b.size() >= 24)  // IHDR is the first chunk
    png_fail(fmt::format("the image is {} x {}, larger than the {} x {} this reader takes", be32(&b[16]), be32(&b[20]),
                         max_side, max_side));
  check(err);
  // Every colour type and depth converts to 8-bit RGB (16-bit samples keep their high byte, palette
  // entries are looked up); at most max_side^2 * 3 bytes.
  size_t len = 0;
  check(spng_decoded_image_size(ctx.get(), SPNG_FMT_RGB8, &len));
  std::vector<uint8_t> rgb(len);
  check(spng_decode_image(ctx.get(), rgb.data(), rgb.size(), SPNG_FMT_RGB8, 0));
  check(spng_decode_chunks(ctx.get()));  // the chunks after the image, up to IEND
  check_image_stream(b, declared_raw_bytes(ihdr));
  GrayImage img;
  img.width = ihdr.width;
  img.height = ihdr.height;
  img.pixels.resize(static_cast<size_t>(img.width * img.height));
  if (rgb.size() != img.pixels.size() * 3) png_fail("libspng returned an image of an unexpected size");
  const bool gray = ihdr.color_type == SPNG_COLOR_TYPE_GRAYSCALE || ihdr.color_type == SPNG_COLOR_TYPE_GRAYSCALE_ALPHA;
  for (size_t i = 0; i < img.pixels.size(); ++i) {
    const uint8_t* px = &rgb[3 * i];
    img.pixels[i] = gray ? px[0] : static_cast<uint8_t>(std::lround(0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2]));
  }
  return img;
}

GrayImage read_png_gray(const std::string& path, int64_t max_side) {
  try {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) throw std::runtime_error("is a directory, not a PNG file");
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot be read");
    // At most one buffer past the largest file allowed (a bound that holds for pipes and devices,
    // whose size is not known beforehand).
    const uint64_t cap = max_png_file_bytes(max_side);
    std::vector<uint8_t> bytes;
    std::vector<char> buf(size_t{1} << 16);
    while (bytes.size() <= cap) {
      f.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      if (f.gcount() <= 0) break;
      bytes.insert(bytes.end(), buf.data(), buf.data() + f.gcount());
    }
    if (f.bad()) throw std::runtime_error("cannot be read");
    if (bytes.size() > cap) {
      const int64_t side = std::clamp<int64_t>(max_side, 1, kMaxPngSide);
      png_fail(fmt::format("the file is larger than the {} bytes a PNG of at most {} x {} pixels takes", cap, side, side));
    }
    return decode_png_gray(bytes, max_side);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(fmt::format("{}: {}", path, e.what()));
  }
}

// ---------------------------------------------------------------------------------------------
// Preview grids

namespace {

// 3x5 digits, one row per byte (bits 2..0 = left..right).
constexpr uint8_t kDigits[10][5] = {{7, 5, 5, 5, 7}, {2, 6, 2, 2, 7}, {7, 1, 7, 4, 7}, {7, 1, 7, 1, 7},
                                    {5, 5, 7, 1, 1}, {7, 4, 7, 1, 7}, {7, 4, 7, 5, 7}, {7, 1, 2, 2, 2},
                                    {7, 5, 7, 5, 7}, {7, 5, 7, 1, 7}};
constexpr uint8_t kMinus[5] = {0, 0, 7, 0, 0};

void draw_text(GrayImage& g, int64_t x0, int64_t y0, const std::string& s, int scale, uint8_t ink) {
  int64_t x = x0;
  for (char ch : s) {
    const uint8_t* glyph = ch == '-' ? kMinus : (ch >= '0' && ch <= '9' ? kDigits[ch - '0'] : nullptr);
    if (glyph)
      for (int r = 0; r < 5; ++r)
        for (int c = 0; c < 3; ++c)
          if (glyph[r] & (4 >> c))
            for (int dy = 0; dy < scale; ++dy)
              for (int dx = 0; dx < scale; ++dx) {
                const int64_t yy = y0 + r * scale + dy, xx = x + c * scale + dx;
                if (yy >= 0 && yy < g.height && xx >= 0 && xx < g.width) g.pixels[yy * g.width + xx] = ink;
              }
    x += 4 * scale;
  }
}

}  // namespace

bool write_preview_png(const Task& task, Split split, int64_t count, const std::string& path) {
  const auto* view = dynamic_cast<const ImageTask*>(&task);
  if (!view) return false;
  count = std::max<int64_t>(1, std::min(count, task.split_size(split)));
  const int64_t h = view->image_height(), w = view->image_width();
  const int64_t scale = std::max<int64_t>(1, (64 + std::max(h, w) - 1) / std::max(h, w));
  const int text_scale = 2, border = 4;
  const int64_t label_h = 5 * text_scale + 4;
  const int64_t cols = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(count))));
  const int64_t rows = (count + cols - 1) / cols;
  const int64_t cell_w = w * scale + border, cell_h = h * scale + label_h + border;
  GrayImage g;
  g.width = cols * cell_w + border;
  g.height = rows * cell_h + border;
  g.pixels.assign(static_cast<size_t>(g.width * g.height), 96);  // mid-gray frame
  for (int64_t i = 0; i < count; ++i) {
    const Example ex = task.example(split, i);
    const std::vector<uint8_t> px = view->image_pixels(ex);
    const int64_t ox = border + (i % cols) * cell_w, oy = border + (i / cols) * cell_h;
    for (int64_t y = 0; y < h * scale; ++y)
      for (int64_t x = 0; x < w * scale; ++x)
        g.pixels[(oy + y) * g.width + ox + x] = px[static_cast<size_t>((y / scale) * w + x / scale)];
    for (int64_t y = h * scale; y < h * scale + label_h; ++y)  // white strip for the label
      for (int64_t x = 0; x < w * scale; ++x) g.pixels[(oy + y) * g.width + ox + x] = 255;
    const std::string label = ex.target.empty() ? std::string() : std::to_string(ex.target[0]);
    draw_text(g, ox + 2, oy + h * scale + 2, label, text_scale, 0);
  }
  write_png_gray(path, g);
  return true;
}

}  // namespace ab
