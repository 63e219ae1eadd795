// PNG writer (stored deflate blocks) and reader (full inflate), see png.hpp. Written from the
// PNG specification (ISO/IEC 15948) and RFC 1950/1951.
#include "io/png.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>

#include <fmt/format.h>

namespace ab {

// ---------------------------------------------------------------------------------------------
// Checksums

namespace {

std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t n = 0; n < 256; ++n) {
    uint32_t c = n;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    t[n] = c;
  }
  return t;
}

}  // namespace

uint32_t crc32(const uint8_t* data, size_t n, uint32_t crc) {
  static const std::array<uint32_t, 256> table = make_crc_table();
  uint32_t c = crc ^ 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t adler32(const uint8_t* data, size_t n, uint32_t adler) {
  constexpr uint32_t kMod = 65521;
  uint32_t a = adler & 0xFFFF, b = adler >> 16;
  while (n > 0) {
    const size_t chunk = std::min<size_t>(n, 5552);  // the largest run without overflow
    for (size_t i = 0; i < chunk; ++i) {
      a += data[i];
      b += a;
    }
    a %= kMod;
    b %= kMod;
    data += chunk;
    n -= chunk;
  }
  return (b << 16) | a;
}

// ---------------------------------------------------------------------------------------------
// Inflate (RFC 1951)

namespace {

[[noreturn]] void inflate_fail(const std::string& what) { throw std::runtime_error("inflate: " + what); }

struct BitReader {
  const uint8_t* p;
  size_t n, pos = 0;  // byte position
  uint32_t bitbuf = 0;
  int bitcount = 0;

  int bit() {
    if (bitcount == 0) {
      if (pos >= n) inflate_fail("the compressed stream is truncated");
      bitbuf = p[pos++];
      bitcount = 8;
    }
    const int b = static_cast<int>(bitbuf & 1);
    bitbuf >>= 1;
    --bitcount;
    return b;
  }
  uint32_t bits(int count) {  // least significant bit first
    uint32_t v = 0;
    for (int i = 0; i < count; ++i) v |= static_cast<uint32_t>(bit()) << i;
    return v;
  }
  void align() { bitcount = 0; }
};

// A canonical Huffman code: counts per length and the symbols in code order.
struct Huffman {
  std::array<uint16_t, 16> count{};
  std::vector<uint16_t> symbol;

  // lengths[s] = code length of symbol s (0 = unused). Rejects over-subscribed codes; an
  // incomplete code is allowed (RFC 1951 permits one for a single distance code).
  void build(const uint8_t* lengths, int n) {
    count.fill(0);
    for (int s = 0; s < n; ++s) ++count[lengths[s]];
    count[0] = 0;
    int left = 1;
    for (int len = 1; len < 16; ++len) {
      left <<= 1;
      left -= count[len];
      if (left < 0) inflate_fail("over-subscribed Huffman code");
    }
    std::array<uint16_t, 16> offs{};
    for (int len = 1; len < 15; ++len) offs[len + 1] = static_cast<uint16_t>(offs[len] + count[len]);
    symbol.assign(static_cast<size_t>(n), 0);
    for (int s = 0; s < n; ++s)
      if (lengths[s] != 0) symbol[offs[lengths[s]]++] = static_cast<uint16_t>(s);
  }

  int decode(BitReader& br) const {
    int code = 0, first = 0, index = 0;
    for (int len = 1; len < 16; ++len) {
      code |= br.bit();
      const int c = count[len];
      if (code - c < first) return symbol[index + (code - first)];
      index += c;
      first += c;
      first <<= 1;
      code <<= 1;
    }
    inflate_fail("invalid Huffman code in the stream");
  }
};

constexpr uint16_t kLenBase[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                   31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
constexpr uint8_t kLenExtra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
constexpr uint16_t kDistBase[30] = {1,   2,   3,   4,   5,   7,    9,    13,   17,   25,   33,   49,   65,    97,    129,
                                    193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
constexpr uint8_t kDistExtra[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};

// A few hundred compressed bytes can expand to gigabytes: the output never grows past `limit`.
void grow_check(size_t have, size_t more, size_t limit) {
  if (more > limit - have) inflate_fail(fmt::format("the data inflates beyond the {} bytes expected", limit));
}

void inflate_codes(BitReader& br, const Huffman& lit, const Huffman& dist, std::vector<uint8_t>& out, size_t limit) {
  for (;;) {
    int sym = lit.decode(br);
    if (sym < 256) {
      grow_check(out.size(), 1, limit);
      out.push_back(static_cast<uint8_t>(sym));
    } else if (sym == 256) {
      return;
    } else {
      sym -= 257;
      if (sym >= 29) inflate_fail("invalid length symbol");
      const size_t len = kLenBase[sym] + br.bits(kLenExtra[sym]);
      const int ds = dist.decode(br);
      if (ds >= 30) inflate_fail("invalid distance symbol");
      const size_t d = kDistBase[ds] + br.bits(kDistExtra[ds]);
      if (d > out.size()) inflate_fail("a back-reference points before the start of the output");
      grow_check(out.size(), len, limit);
      const size_t from = out.size() - d;
      for (size_t i = 0; i < len; ++i) out.push_back(out[from + i]);  // may overlap: byte by byte
    }
  }
}

void inflate_raw(BitReader& br, std::vector<uint8_t>& out, size_t limit) {
  static const std::pair<Huffman, Huffman> fixed = [] {
    std::array<uint8_t, 288> l{};
    for (int s = 0; s < 144; ++s) l[s] = 8;
    for (int s = 144; s < 256; ++s) l[s] = 9;
    for (int s = 256; s < 280; ++s) l[s] = 7;
    for (int s = 280; s < 288; ++s) l[s] = 8;
    std::array<uint8_t, 30> d{};
    d.fill(5);
    std::pair<Huffman, Huffman> h;
    h.first.build(l.data(), 288);
    h.second.build(d.data(), 30);
    return h;
  }();
  int last = 0;
  while (!last) {
    last = br.bit();
    const uint32_t type = br.bits(2);
    if (type == 0) {
      br.align();
      if (br.pos + 4 > br.n) inflate_fail("truncated stored block header");
      const uint32_t len = br.p[br.pos] | (br.p[br.pos + 1] << 8);
      const uint32_t nlen = br.p[br.pos + 2] | (br.p[br.pos + 3] << 8);
      br.pos += 4;
      if ((len ^ 0xFFFFu) != nlen) inflate_fail("stored block length does not match its complement");
      if (br.pos + len > br.n) inflate_fail("truncated stored block");
      grow_check(out.size(), len, limit);
      out.insert(out.end(), br.p + br.pos, br.p + br.pos + len);
      br.pos += len;
    } else if (type == 1) {
      inflate_codes(br, fixed.first, fixed.second, out, limit);
    } else if (type == 2) {
      const int nlen = static_cast<int>(br.bits(5)) + 257, ndist = static_cast<int>(br.bits(5)) + 1;
      const int ncode = static_cast<int>(br.bits(4)) + 4;
      if (nlen > 286 || ndist > 30) inflate_fail("bad dynamic block code counts");
      static constexpr uint8_t kOrder[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
      std::array<uint8_t, 19> cl{};
      for (int i = 0; i < ncode; ++i) cl[kOrder[i]] = static_cast<uint8_t>(br.bits(3));
      Huffman lencode;
      lencode.build(cl.data(), 19);
      std::array<uint8_t, 316> lengths{};
      int idx = 0;
      while (idx < nlen + ndist) {
        const int sym = lencode.decode(br);
        if (sym < 16) {
          lengths[idx++] = static_cast<uint8_t>(sym);
          continue;
        }
        uint8_t value = 0;
        int repeat;
        if (sym == 16) {
          if (idx == 0) inflate_fail("repeat of a length with no previous length");
          value = lengths[idx - 1];
          repeat = 3 + static_cast<int>(br.bits(2));
        } else if (sym == 17) {
          repeat = 3 + static_cast<int>(br.bits(3));
        } else {
          repeat = 11 + static_cast<int>(br.bits(7));
        }
        if (idx + repeat > nlen + ndist) inflate_fail("code length repeat runs past the end");
        while (repeat--) lengths[idx++] = value;
      }
      if (lengths[256] == 0) inflate_fail("dynamic block without an end-of-block code");
      Huffman lit, dist;
      lit.build(lengths.data(), nlen);
      dist.build(lengths.data() + nlen, ndist);
      inflate_codes(br, lit, dist, out, limit);
    } else {
      inflate_fail("invalid block type 3");
    }
  }
}

}  // namespace

std::vector<uint8_t> zlib_inflate(const uint8_t* data, size_t n, size_t max_out) {
  if (n < 6) inflate_fail("zlib stream shorter than its header and checksum");
  const uint8_t cmf = data[0], flg = data[1];
  if ((cmf & 0x0F) != 8) inflate_fail(fmt::format("compression method {} is not deflate", cmf & 0x0F));
  if (((cmf << 8) | flg) % 31 != 0) inflate_fail("bad zlib header check bits");
  if (flg & 0x20) inflate_fail("zlib preset dictionaries are not supported");
  BitReader br{data + 2, n - 2};
  std::vector<uint8_t> out;
  inflate_raw(br, out, max_out);
  const size_t at = 2 + br.pos;
  if (at + 4 > n) inflate_fail("missing Adler-32 checksum");
  const uint32_t want = (static_cast<uint32_t>(data[at]) << 24) | (data[at + 1] << 16) | (data[at + 2] << 8) | data[at + 3];
  if (adler32(out.data(), out.size()) != want) inflate_fail("Adler-32 checksum mismatch");
  return out;
}

// ---------------------------------------------------------------------------------------------
// PNG

namespace {

constexpr uint8_t kSignature[8] = {137, 80, 78, 71, 13, 10, 26, 10};

void put_u32(std::vector<uint8_t>& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<uint8_t>(v >> s));
}

uint32_t get_u32(const uint8_t* p) {
  return (static_cast<uint32_t>(p[0]) << 24) | (static_cast<uint32_t>(p[1]) << 16) | (static_cast<uint32_t>(p[2]) << 8) |
         p[3];
}

void put_chunk(std::vector<uint8_t>& out, const char type[4], const std::vector<uint8_t>& data) {
  put_u32(out, static_cast<uint32_t>(data.size()));
  const size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  put_u32(out, crc32(out.data() + start, out.size() - start));
}

[[noreturn]] void png_fail(const std::string& what) { throw std::runtime_error("PNG: " + what); }

uint8_t paeth(int a, int b, int c) {
  const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
  if (pa <= pb && pa <= pc) return static_cast<uint8_t>(a);
  return static_cast<uint8_t>(pb <= pc ? b : c);
}

}  // namespace

std::vector<uint8_t> encode_png_gray(const GrayImage& img) {
  if (img.width <= 0 || img.height <= 0 || img.width > (1 << 24) || img.height > (1 << 24))
    throw std::invalid_argument(fmt::format("PNG: bad image size {} x {}", img.width, img.height));
  if (static_cast<int64_t>(img.pixels.size()) != img.width * img.height)
    throw std::invalid_argument(
        fmt::format("PNG: {} pixels for a {} x {} image", img.pixels.size(), img.width, img.height));
  // Raw scanlines: a filter byte (0 = none) before each row.
  std::vector<uint8_t> raw;
  raw.reserve(static_cast<size_t>(img.height * (img.width + 1)));
  for (int64_t y = 0; y < img.height; ++y) {
    raw.push_back(0);
    raw.insert(raw.end(), img.pixels.begin() + y * img.width, img.pixels.begin() + (y + 1) * img.width);
  }
  // zlib: header (deflate, 32K window, check bits), stored blocks of at most 65535 bytes, Adler-32.
  std::vector<uint8_t> z = {0x78, 0x01};
  size_t off = 0;
  do {
    const size_t len = std::min<size_t>(raw.size() - off, 65535);
    const bool last = off + len == raw.size();
    z.push_back(last ? 1 : 0);  // BFINAL, BTYPE = 00
    z.push_back(static_cast<uint8_t>(len));
    z.push_back(static_cast<uint8_t>(len >> 8));
    z.push_back(static_cast<uint8_t>(~len));
    z.push_back(static_cast<uint8_t>(~len >> 8));
    z.insert(z.end(), raw.begin() + off, raw.begin() + off + len);
    off += len;
  } while (off < raw.size());
  put_u32(z, adler32(raw.data(), raw.size()));

  std::vector<uint8_t> out(kSignature, kSignature + 8);
  std::vector<uint8_t> ihdr;
  put_u32(ihdr, static_cast<uint32_t>(img.width));
  put_u32(ihdr, static_cast<uint32_t>(img.height));
  ihdr.insert(ihdr.end(), {8, 0, 0, 0, 0});  // bit depth 8, gray, deflate, filter method 0, no interlace
  put_chunk(out, "IHDR", ihdr);
  put_chunk(out, "IDAT", z);
  put_chunk(out, "IEND", {});
  return out;
}

void write_png_gray(const std::string& path, const GrayImage& image) {
  const std::vector<uint8_t> bytes = encode_png_gray(image);
  std::ofstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(fmt::format("cannot write '{}'", path));
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error(fmt::format("writing '{}' failed", path));
}

GrayImage decode_png_gray(const std::vector<uint8_t>& b, int64_t max_side) {
  if (b.size() < 8 || std::memcmp(b.data(), kSignature, 8) != 0) png_fail("not a PNG file (bad signature)");
  size_t pos = 8;
  uint32_t width = 0, height = 0;
  int depth = 0, ctype = -1, interlace = 0;
  std::vector<uint8_t> idat, palette;
  bool seen_end = false;
  while (!seen_end) {
    if (pos + 12 > b.size()) png_fail("truncated chunk");
    const uint32_t len = get_u32(&b[pos]);
    if (len > b.size() - pos - 12) png_fail("truncated chunk data");
    const uint8_t* type = &b[pos + 4];
    const uint8_t* data = &b[pos + 8];
    if (crc32(type, len + 4) != get_u32(&b[pos + 8 + len]))
      png_fail(fmt::format("CRC mismatch in chunk '{}'", std::string(reinterpret_cast<const char*>(type), 4)));
    const std::string t(reinterpret_cast<const char*>(type), 4);
    if (t == "IHDR") {
      if (len != 13) png_fail("IHDR has the wrong size");
      width = get_u32(data);
      height = get_u32(data + 4);
      depth = data[8];
      ctype = data[9];
      if (data[10] != 0 || data[11] != 0) png_fail("unknown compression or filter method");
      interlace = data[12];
    } else if (t == "PLTE") {
      palette.assign(data, data + len);
    } else if (t == "IDAT") {
      idat.insert(idat.end(), data, data + len);
    } else if (t == "IEND") {
      seen_end = true;
    } else if (!(type[0] & 0x20)) {
      png_fail(fmt::format("unknown critical chunk '{}'", t));
    }
    pos += 12 + len;
  }
  if (ctype < 0) png_fail("missing IHDR");
  if (width == 0 || height == 0) png_fail("bad image size");
  if (width > max_side || height > max_side)
    png_fail(fmt::format("the image is {} x {}, larger than the {} x {} this reader takes", width, height, max_side,
                         max_side));
  if (interlace != 0) png_fail("interlaced (Adam7) images are not supported");
  int channels;
  switch (ctype) {
    case 0: channels = 1; break;
    case 2: channels = 3; break;
    case 3: channels = 1; break;
    case 4: channels = 2; break;
    case 6: channels = 4; break;
    default: png_fail(fmt::format("invalid colour type {}", ctype));
  }
  if (depth != 8 && !(depth == 16 && ctype != 3))
    png_fail(fmt::format("bit depth {} is not supported (only 8, or 16 without a palette)", depth));
  if (ctype == 3 && palette.empty()) png_fail("palette image without PLTE");
  const size_t bpp = static_cast<size_t>(channels * depth / 8);  // bytes per pixel
  const size_t stride = bpp * width;
  // The declared size bounds the inflated size: each row is a filter byte and its pixels.
  const std::vector<uint8_t> raw = zlib_inflate(idat.data(), idat.size(), (stride + 1) * height);
  if (raw.size() < (stride + 1) * height) png_fail("image data is shorter than the image");
  std::vector<uint8_t> cur(stride), prev(stride, 0);
  GrayImage img;
  img.width = width;
  img.height = height;
  img.pixels.resize(static_cast<size_t>(width) * height);
  for (uint32_t y = 0; y < height; ++y) {
    const uint8_t* line = &raw[y * (stride + 1)];
    const int filter = line[0];
    for (size_t i = 0; i < stride; ++i) {
      const int x = line[1 + i];
      const int a = i >= bpp ? cur[i - bpp] : 0, up = prev[i], c = i >= bpp ? prev[i - bpp] : 0;
      int v;
      switch (filter) {
        case 0: v = x; break;
        case 1: v = x + a; break;
        case 2: v = x + up; break;
        case 3: v = x + ((a + up) >> 1); break;
        case 4: v = x + paeth(a, up, c); break;
        default: png_fail(fmt::format("invalid row filter {} in row {}", filter, y));
      }
      cur[i] = static_cast<uint8_t>(v);
    }
    const size_t step = static_cast<size_t>(depth / 8);  // 16-bit samples: keep the high byte
    for (uint32_t x = 0; x < width; ++x) {
      const uint8_t* px = &cur[x * bpp];
      uint8_t g;
      if (ctype == 0 || ctype == 4) {
        g = px[0];
      } else {
        int r, gg, bb;
        if (ctype == 3) {
          const size_t k = static_cast<size_t>(px[0]) * 3;
          if (k + 2 >= palette.size()) png_fail("palette index out of range");
          r = palette[k];
          gg = palette[k + 1];
          bb = palette[k + 2];
        } else {
          r = px[0];
          gg = px[step];
          bb = px[2 * step];
        }
        g = static_cast<uint8_t>(std::lround(0.299 * r + 0.587 * gg + 0.114 * bb));
      }
      img.pixels[static_cast<size_t>(y) * width + x] = g;
    }
    std::swap(cur, prev);
  }
  return img;
}

GrayImage read_png_gray(const std::string& path, int64_t max_side) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(fmt::format("cannot read '{}'", path));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  try {
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
