// The PNG reader and writer (harness/io/png.cpp, on libspng and zlib): files written by Python's
// zlib and built here byte by byte, every colour type and bit depth, Adam7, the bounds that keep a
// hostile file cheap (declared size, 4096 sides, file size, metadata chunks), and one clear
// refusal per kind of damaged file.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "io/png.hpp"

using namespace ab;

namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

// ---------------------------------------------------------------------------------------------
// Building PNGs here (zlib's compress2 and crc32), so that every field can be set or broken.

void u32(Bytes& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<uint8_t>(v >> s));
}

void chunk(Bytes& png, const std::string& type, const Bytes& data) {
  u32(png, static_cast<uint32_t>(data.size()));
  Bytes body(type.begin(), type.end());
  body.insert(body.end(), data.begin(), data.end());
  png.insert(png.end(), body.begin(), body.end());
  u32(png, static_cast<uint32_t>(::crc32(0, body.data(), static_cast<uInt>(body.size()))));
}

Bytes deflate(const Bytes& raw, int level = 9) {
  uLongf n = compressBound(static_cast<uLong>(raw.size()));
  Bytes z(n);
  EXPECT_EQ(compress2(z.data(), &n, raw.data(), static_cast<uLong>(raw.size()), level), Z_OK);
  z.resize(n);
  return z;
}

const Bytes kSignature = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

struct Header {
  uint32_t width = 0, height = 0;
  uint8_t depth = 8, color = 0, compression = 0, filter = 0, interlace = 0;
};

Bytes ihdr(const Header& h) {
  Bytes d;
  u32(d, h.width), u32(d, h.height);
  d.insert(d.end(), {h.depth, h.color, h.compression, h.filter, h.interlace});
  return d;
}

// A PNG of `raw` filtered scanlines, with `extra` chunks between IHDR and IDAT.
Bytes make_png(const Header& h, const Bytes& raw, const std::vector<std::pair<std::string, Bytes>>& extra = {}) {
  Bytes png = kSignature;
  chunk(png, "IHDR", ihdr(h));
  for (const auto& [type, data] : extra) chunk(png, type, data);
  chunk(png, "IDAT", deflate(raw));
  chunk(png, "IEND", {});
  return png;
}

// Filter byte 0 before each row of `row_bytes`.
Bytes rows(const Bytes& samples, size_t row_bytes) {
  Bytes raw;
  for (size_t at = 0; at < samples.size(); at += row_bytes) {
    raw.push_back(0);
    raw.insert(raw.end(), samples.begin() + static_cast<std::ptrdiff_t>(at),
               samples.begin() + static_cast<std::ptrdiff_t>(at + row_bytes));
  }
  return raw;
}

std::string error_of(const Bytes& png, int64_t max_side = kMaxPngSide) {
  try {
    decode_png_gray(png, max_side);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

uint8_t lum(int r, int g, int b) { return static_cast<uint8_t>(std::lround(0.299 * r + 0.587 * g + 0.114 * b)); }

// 64 x 32 gray, v = (x / 4 * 40 + y * 3) % 256, row filters 0,1,2,3,4 cycling, dynamic Huffman (written by Python's zlib).
const std::string kGrayPng(
    "\x89\x50\x4e\x47\x0d\x0a\x1a\x0a\x00\x00\x00\x0d\x49\x48\x44\x52\x00\x00\x00\x40\x00\x00\x00\x20"
    "\x08\x00\x00\x00\x00\x87\xf6\x21\x58\x00\x00\x01\x4a\x49\x44\x41\x54\x78\xda\xc5\xd3\x31\x48\x54"
    "\x71\x1c\xc0\xf1\xf7\xde\x1d\xd1\xe2\x05\x27\x59\x83\x17\x14\x52\x07\x9d\x70\x4b\x0a\x26\x5c\x43"
    "\x35\x28\x5c\x41\x09\x12\x5c\x41\x0a\x3a\x98\x43\x81\x0a\xd6\x12\x64\x50\x0d\x0d\x75\x43\x0d\x06"
    "\xea\xd2\x50\x90\x0d\x2d\x35\xe4\x60\x43\x2e\x0e\x36\xe8\xd0\x52\x83\x0e\x3a\xe8\xe2\x50\x7d\x6e"
    "\x15\x82\xab\x77\xf2\x3e\xf0\x5b\xfe\xc3\xe3\xfd\xbf\xfc\xfe\x41\x40\x9e\xcb\x4c\xf0\x8a\x2f\x6c"
    "\x71\x94\x73\x0c\xf3\x94\x0f\x7c\xe7\x20\x45\xfa\x09\x53\xb5\x0f\xc4\x98\x28\x15\xd7\x81\x28\x8a"
    "\x5a\xfe\x32\xd5\x3a\xce\xd3\xb5\x2b\xc4\x99\xe0\x10\x9d\xdc\xe0\x21\x6f\xf9\xc6\x6f\x4e\x71\x89"
    "\x71\xa6\x59\x64\x93\x23\x94\x18\x22\xcc\x26\x1e\x31\xf3\x8f\x01\x1b\x1f\xf1\x18\x17\x19\xa5\xca"
    "\x27\x7e\x92\xa1\x83\xeb\x4c\xf1\x86\x15\x7e\x71\x92\x32\x63\x84\xc7\x13\x8f\x78\x38\xc6\x16\x36"
    "\x26\x62\x3b\x7d\xdc\x63\x8e\x25\x76\xc8\x71\x81\x5b\x3c\xe7\x23\x3f\x68\xe2\x0c\x15\x1e\x10\x16"
    "\x13\x8f\x98\xdb\xaf\x88\xf9\x7a\x23\x76\x33\xc8\x13\xde\xb3\x46\x9a\x02\x57\xb9\xcb\x2c\x5f\xd9"
    "\xa6\x95\xf3\x8c\xf0\x8c\xb0\x94\x78\xc4\xb6\x18\x4f\xf9\xbf\x36\x71\x6f\xdc\xa0\x97\x3b\xbc\x64"
    "\x81\x0d\x9a\x39\xcb\x00\x8f\x99\x67\x95\xda\x1f\x9f\xe6\x0a\x93\xcc\x10\x96\x13\x8f\x58\x88\xb1"
    "\x85\x8d\x79\xce\xd7\xb8\xcf\x6b\x96\xd9\xe5\x04\x3d\xdc\xe6\x05\x9f\x59\x27\x4b\x17\x37\x79\xc4"
    "\x3b\xc2\x4a\xcc\x88\x7f\x00\x4f\xec\xfc\x32\xc3\xac\x80\xff\x00\x00\x00\x00\x49\x45\x4e\x44\xae"
    "\x42\x60\x82"
    , 387);
// 5 x 3 RGB, (x * 50, y * 80, x * y * 30) % 256, row filters 4,1,2, fixed Huffman (written by Python's zlib).
const std::string kRgbPng(
    "\x89\x50\x4e\x47\x0d\x0a\x1a\x0a\x00\x00\x00\x0d\x49\x48\x44\x52\x00\x00\x00\x05\x00\x00\x00\x03"
    "\x08\x02\x00\x00\x00\xd4\x54\x52\xaf\x00\x00\x00\x24\x49\x44\x41\x54\x78\x01\x63\x61\x60\x60\x30"
    "\x42\x42\x8c\x0c\x01\x40\x4a\x0e\x8e\x98\x80\x7c\x86\x00\x39\x86\x00\x1b\x86\x80\x28\x86\x80\x0a"
    "\x00\x57\x0c\x05\x1c\x6d\x53\xfe\xfd\x00\x00\x00\x00\x49\x45\x4e\x44\xae\x42\x60\x82"
    , 93);

TEST(Png, ReadsFilesCompressedByZlib) {
  const GrayImage g = decode_png_gray(Bytes(kGrayPng.begin(), kGrayPng.end()));
  ASSERT_EQ(g.width, 64);
  ASSERT_EQ(g.height, 32);
  for (int y = 0; y < 32; ++y)
    for (int x = 0; x < 64; ++x) ASSERT_EQ(g.pixels[y * 64 + x], (x / 4 * 40 + y * 3) % 256) << y << "," << x;
  const GrayImage c = decode_png_gray(Bytes(kRgbPng.begin(), kRgbPng.end()));
  ASSERT_EQ(c.width, 5);
  ASSERT_EQ(c.height, 3);
  for (int y = 0; y < 3; ++y)
    for (int x = 0; x < 5; ++x)
      ASSERT_EQ(c.pixels[y * 5 + x], lum((x * 50) % 256, (y * 80) % 256, (x * y * 30) % 256));
  // A flipped bit is caught by the chunk CRC.
  Bytes bad(kGrayPng.begin(), kGrayPng.end());
  bad[60] ^= 0x10;
  EXPECT_THROW(decode_png_gray(bad), std::runtime_error);
}

TEST(Png, EveryColourTypeAndBitDepth) {
  // 16-bit gray keeps the high byte.
  GrayImage g = decode_png_gray(make_png({3, 1, 16, 0}, rows({0x12, 0x34, 0xAB, 0xCD, 0xFF, 0x00}, 6)));
  EXPECT_EQ(g.pixels, Bytes({0x12, 0xAB, 0xFF}));
  // 1-, 2- and 4-bit gray scale to 0..255.
  g = decode_png_gray(make_png({8, 1, 1, 0}, rows({0b10110000}, 1)));
  EXPECT_EQ(g.pixels, Bytes({255, 0, 255, 255, 0, 0, 0, 0}));
  g = decode_png_gray(make_png({4, 1, 2, 0}, rows({0b00011011}, 1)));
  EXPECT_EQ(g.pixels, Bytes({0, 85, 170, 255}));
  g = decode_png_gray(make_png({2, 1, 4, 0}, rows({0x0F}, 1)));
  EXPECT_EQ(g.pixels, Bytes({0, 255}));
  // Gray + alpha: the alpha is ignored.
  g = decode_png_gray(make_png({2, 1, 8, 4}, rows({7, 0, 200, 255}, 4)));
  EXPECT_EQ(g.pixels, Bytes({7, 200}));
  // RGBA 8 and 16 bits: ITU-R 601 weights of the (high) bytes.
  g = decode_png_gray(make_png({1, 1, 8, 6}, rows({10, 200, 30, 0}, 4)));
  EXPECT_EQ(g.pixels, Bytes({lum(10, 200, 30)}));
  g = decode_png_gray(make_png({1, 1, 16, 6}, rows({10, 1, 200, 2, 30, 3, 0, 0}, 8)));
  EXPECT_EQ(g.pixels, Bytes({lum(10, 200, 30)}));
  // Palettes of 8 and 4 bits.
  const Bytes plte = {255, 0, 0, 0, 255, 0, 0, 0, 255};
  g = decode_png_gray(make_png({3, 1, 8, 3}, rows({2, 0, 1}, 3), {{"PLTE", plte}}));
  EXPECT_EQ(g.pixels, Bytes({lum(0, 0, 255), lum(255, 0, 0), lum(0, 255, 0)}));
  g = decode_png_gray(make_png({2, 1, 4, 3}, rows({0x12}, 1), {{"PLTE", plte}}));
  EXPECT_EQ(g.pixels, Bytes({lum(0, 255, 0), lum(0, 0, 255)}));
  // Ancillary chunks (text, gamma, an unknown one) change nothing.
  g = decode_png_gray(make_png({2, 1, 8, 0}, rows({5, 6}, 2),
                               {{"tEXt", {'k', 0, 'v'}}, {"gAMA", {0, 0, 0xB1, 0x8F}}, {"zzZz", {1, 2, 3}}}));
  EXPECT_EQ(g.pixels, Bytes({5, 6}));
}

TEST(Png, Adam7Interlacing) {
  // 5 x 5 gray, pixel (x, y) = 10 * y + x, stored in the seven passes.
  const int w = 5, h = 5;
  static constexpr int kPass[7][4] = {{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4},
                                      {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}};
  Bytes raw;
  for (const auto& p : kPass)
    for (int y = p[1]; y < h; y += p[3]) {
      if (p[0] >= w) break;
      raw.push_back(0);
      for (int x = p[0]; x < w; x += p[2]) raw.push_back(static_cast<uint8_t>(10 * y + x));
    }
  Header hd{w, h};
  hd.interlace = 1;
  const GrayImage g = decode_png_gray(make_png(hd, raw));
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) ASSERT_EQ(g.pixels[y * w + x], 10 * y + x) << x << "," << y;
  // One byte more than the passes hold is refused like any stream longer than the image.
  raw.push_back(0);
  EXPECT_NE(error_of(make_png(hd, raw)).find("inflates beyond the 36 bytes expected"), std::string::npos)
      << error_of(make_png(hd, raw));
}

// A PNG whose header declares `width` x 1 gray pixels and whose IDAT inflates to 1 + 258 * `runs`
// zero bytes (one fixed-Huffman block: a literal, then `runs` back-references of 258 bytes).
Bytes png_inflating_to(uint32_t width, size_t runs) {
  Bytes z = {0x78, 0x01};
  uint32_t acc = 0;
  int nbits = 0;
  auto put = [&](uint32_t v, int n) {  // LSB first
    for (int i = 0; i < n; ++i, v >>= 1) {
      acc |= (v & 1u) << nbits;
      if (++nbits == 8) z.push_back(static_cast<uint8_t>(acc)), acc = 0, nbits = 0;
    }
  };
  auto code = [&](uint32_t c, int n) {  // Huffman codes go MSB first
    for (int i = n - 1; i >= 0; --i) put((c >> i) & 1u, 1);
  };
  put(1, 1), put(1, 2);  // final block, fixed Huffman
  code(0x30, 8);         // literal 0
  for (size_t r = 0; r < runs; ++r) code(0xC5, 8), code(0, 5);  // length 258 (symbol 285), distance 1
  code(0, 7);                                                    // end of block
  if (nbits) z.push_back(static_cast<uint8_t>(acc));
  const Bytes raw(1 + 258 * runs, 0);
  const uint32_t a = static_cast<uint32_t>(::adler32(1, raw.data(), static_cast<uInt>(raw.size())));
  for (int s = 24; s >= 0; s -= 8) z.push_back(static_cast<uint8_t>(a >> s));
  Bytes png = kSignature;
  chunk(png, "IHDR", ihdr({width, 1}));
  chunk(png, "IDAT", z);
  chunk(png, "IEND", {});
  return png;
}

TEST(Png, DecompressionBombsAndHugeImagesAreRefused) {
  // 1 x 1 declared, 10 MB inflated (from 65 KB): refused once the output passes the 2 bytes expected.
  const Bytes bomb = png_inflating_to(1, 40000);
  ASSERT_LT(bomb.size(), 70000u);
  EXPECT_NE(error_of(bomb).find("inflates beyond the 2 bytes expected"), std::string::npos) << error_of(bomb);
  // The same kind of stream behind an honest header (filter byte + 258 pixels) decodes.
  const GrayImage ok = decode_png_gray(png_inflating_to(258, 1));
  EXPECT_EQ(ok.width, 258);
  EXPECT_EQ(ok.pixels, Bytes(258, 0));
  EXPECT_NE(error_of(png_inflating_to(5000, 1)).find("5000 x 1, larger than the 4096 x 4096"), std::string::npos);
  // A caller's smaller limit (a task's largest image) is the limit, and it cannot be raised past 4096.
  EXPECT_NE(error_of(png_inflating_to(258, 1), 256).find("258 x 1, larger than the 256 x 256"), std::string::npos);
  EXPECT_NE(error_of(png_inflating_to(5000, 1), 1 << 20).find("larger than the 4096 x 4096"), std::string::npos);
  // 8 MiB of zeros in an 8 KB zTXt chunk: the metadata limit stops it, the image is never allocated.
  std::vector<std::pair<std::string, Bytes>> text = {{"zTXt", {'k', 0, 0}}};
  const Bytes zeros = deflate(Bytes(size_t{8} << 20, 0), 1);
  text[0].second.insert(text[0].second.end(), zeros.begin(), zeros.end());
  EXPECT_NE(error_of(make_png({2, 1}, rows({5, 6}, 2), text)).find("metadata chunks exceed"), std::string::npos)
      << error_of(make_png({2, 1}, rows({5, 6}, 2), text));
  // A file larger than any image of the allowed size needs is refused before it is read.
  const Bytes huge(max_png_file_bytes(32) + 1, 0);
  EXPECT_NE(error_of(huge, 32).find("bytes a PNG of at most 32 x 32 pixels takes"), std::string::npos);
}

// One refusal per kind of damage, each naming the problem.
TEST(Png, CorruptFilesAreRefusedWithTheReason) {
  const Header h{4, 3};
  const Bytes samples = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  const Bytes good = make_png(h, rows(samples, 4));
  ASSERT_EQ(decode_png_gray(good).pixels, samples);
  const size_t idat = 8 + 25;  // offset of the IDAT chunk (after the signature and IHDR)
  auto with = [&](size_t at, uint8_t value) {
    Bytes b = good;
    b[at] = value;
    return b;
  };
  auto header = [&](Header hd) { return make_png(hd, rows(samples, 4)); };
  auto stream = [&](const Bytes& z) {  // the good header with this IDAT payload
    Bytes b = kSignature;
    chunk(b, "IHDR", ihdr(h));
    chunk(b, "IDAT", z);
    chunk(b, "IEND", {});
    return b;
  };
  Bytes z = deflate(rows(samples, 4));
  Bytes bad_adler = z;
  bad_adler.back() ^= 1;
  Bytes bad_zlib_header = z;
  bad_zlib_header[1] ^= 1;
  Bytes dictionary = {0x78, 0xBB};  // FDICT set, check bits valid
  dictionary.insert(dictionary.end(), z.begin() + 2, z.end());
  Bytes block_type_3 = {0x78, 0x01, 0x07};
  const Bytes raw = rows(samples, 4);
  Bytes long_row = raw;
  long_row.push_back(0);
  // A wrong Adler-32 in an IDAT chunk of its own: libspng stops reading once the rows are full.
  Bytes split_adler = kSignature;
  chunk(split_adler, "IHDR", ihdr(h));
  chunk(split_adler, "IDAT", Bytes(z.begin(), z.end() - 4));
  chunk(split_adler, "IDAT", Bytes(bad_adler.end() - 4, bad_adler.end()));
  chunk(split_adler, "IEND", {});
  Bytes bad_filter = rows(samples, 4);
  bad_filter[5] = 5;
  Bytes no_idat = kSignature;
  chunk(no_idat, "IHDR", ihdr(h));
  chunk(no_idat, "IEND", {});
  Bytes ihdr_second = kSignature;
  chunk(ihdr_second, "tEXt", {'k', 0, 'v'});
  chunk(ihdr_second, "IHDR", ihdr(h));
  Bytes two_ihdr = kSignature;
  chunk(two_ihdr, "IHDR", ihdr(h));
  chunk(two_ihdr, "IHDR", ihdr(h));
  Bytes short_ihdr = kSignature;
  Bytes ihdr12 = ihdr(h);
  ihdr12.pop_back();
  chunk(short_ihdr, "IHDR", ihdr12);
  Header palette{4, 3, 8, 3};
  Header bad_depth = h, bad_color = h, palette16 = palette, compression = h, filter = h, interlace = h;
  bad_depth.depth = 3, bad_color.color = 5, palette16.depth = 16, compression.compression = 1, filter.filter = 1,
  interlace.interlace = 2;
  const Header zero_width{0, 3}, zero_height{4, 0}, width_2_31{0x80000000u, 1};

  const std::vector<std::tuple<std::string, Bytes, std::string>> cases = {
      {"empty file", {}, "shorter than the PNG signature"},
      {"7 bytes", Bytes(kSignature.begin(), kSignature.end() - 1), "shorter than the PNG signature"},
      {"bad signature", with(0, 0x88), "not a PNG file (its signature is wrong)"},
      {"text file", Bytes(40, 'x'), "not a PNG file (its signature is wrong)"},
      {"truncated in IHDR", Bytes(good.begin(), good.begin() + 20), "truncated"},
      {"truncated after IHDR", Bytes(good.begin(), good.begin() + idat), "truncated"},
      {"truncated in IDAT", Bytes(good.begin(), good.begin() + idat + 12), "truncated"},
      {"no IEND", Bytes(good.begin(), good.end() - 12), "truncated"},
      {"IHDR CRC", with(8 + 21, good[8 + 21] ^ 1), "invalid chunk checksum"},
      {"IHDR 12 bytes", short_ihdr, "invalid IHDR chunk size"},
      {"IHDR not first", ihdr_second, "IHDR"},
      {"IHDR twice", two_ihdr, "out of order"},
      {"width 0", header(zero_width), "invalid image width"},
      {"height 0", header(zero_height), "invalid image height"},
      {"width 2^31", header(width_2_31), "invalid image width"},
      {"bit depth 3", header(bad_depth), "invalid bit depth"},
      {"colour type 5", header(bad_color), "invalid color type"},
      {"16-bit palette", make_png(palette16, rows(samples, 4)), "invalid bit depth"},
      {"compression method 1", header(compression), "invalid compression method"},
      {"filter method 1", header(filter), "invalid filter method"},
      {"interlace method 2", header(interlace), "invalid interlace method"},
      {"IDAT CRC", with(good.size() - 13, good[good.size() - 13] ^ 1), "invalid chunk checksum"},
      {"IDAT length past the end", with(idat, 0x7f), "truncated"},
      {"unknown critical chunk", make_png(h, rows(samples, 4), {{"ABCD", {1}}}), "unknown critical chunk"},
      {"palette without PLTE", make_png(palette, rows(samples, 4)), "missing PLTE"},
      {"PLTE of 4 bytes", make_png(palette, rows(samples, 4), {{"PLTE", {1, 2, 3, 4}}}), "invalid chunk length"},
      {"no IDAT", no_idat, "a chunk is out of order"},
      {"zlib header check bits", stream(bad_zlib_header), "not a valid zlib stream"},
      {"zlib preset dictionary", stream(dictionary), "not a valid zlib stream"},
      {"deflate block type 3", stream(block_type_3), "not a valid zlib stream"},
      {"Adler-32", stream(bad_adler), "not a valid zlib stream"},
      {"Adler-32 in a chunk of its own", split_adler, "not a valid zlib stream (incorrect data check)"},
      {"image data too short", stream(deflate(Bytes(raw.begin(), raw.end() - 5))), "image data is shorter than the image"},
      {"image data too long", stream(deflate(long_row)), "inflates beyond the 15 bytes expected"},
      {"row filter 5", stream(deflate(bad_filter)), "invalid scanline filter"},
  };
  for (const auto& [kind, bytes, expected] : cases) {
    const std::string e = error_of(bytes);
    EXPECT_NE(e.find("PNG: "), std::string::npos) << kind << ": " << (e.empty() ? "accepted" : e);
    EXPECT_NE(e.find(expected), std::string::npos) << kind << ": " << (e.empty() ? "accepted" : e);
  }
}

TEST(Png, ReadErrorsNameTheFile) {
  const fs::path dir = fs::temp_directory_path() / ("ab_png_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / "broken.png").string();
  {
    std::ofstream f(path, std::ios::binary);
    f << "not a png at all";
  }
  try {
    read_png_gray(path);
    ADD_FAILURE() << "accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()), path + ": PNG: not a PNG file (its signature is wrong)");
  }
  try {
    read_png_gray((dir / "missing.png").string());
    ADD_FAILURE() << "accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.png: cannot be read"), std::string::npos) << e.what();
  }
  // Devices and pipes have no size to check beforehand: the read stops past the limit.
  try {
    read_png_gray("/dev/zero", 32);
    ADD_FAILURE() << "accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("/dev/zero: PNG: the file is larger than the"), std::string::npos) << e.what();
  }
  try {
    read_png_gray(dir.string());
    ADD_FAILURE() << "accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("is a directory"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

TEST(Png, WriterRoundTrip) {
  GrayImage img;
  img.width = 300;
  img.height = 257;  // > 64 KiB of scanlines
  img.pixels.resize(static_cast<size_t>(img.width * img.height));
  for (size_t i = 0; i < img.pixels.size(); ++i) img.pixels[i] = static_cast<uint8_t>((i * 2654435761u) >> 13);
  const Bytes bytes = encode_png_gray(img);
  const GrayImage back = decode_png_gray(bytes);
  EXPECT_EQ(back.width, img.width);
  EXPECT_EQ(back.height, img.height);
  EXPECT_EQ(back.pixels, img.pixels);
  // The signature and IHDR fields as the PNG specification lays them out.
  ASSERT_GT(bytes.size(), 33u);
  EXPECT_EQ(Bytes(bytes.begin(), bytes.begin() + 8), kSignature);
  EXPECT_EQ(std::string(bytes.begin() + 12, bytes.begin() + 16), "IHDR");
  EXPECT_EQ(bytes[24], 8);  // bit depth
  EXPECT_EQ(bytes[25], 0);  // gray
  EXPECT_EQ(bytes[28], 0);  // not interlaced
  EXPECT_THROW(encode_png_gray(GrayImage{2, 2, {1, 2, 3}}), std::invalid_argument);
}

}  // namespace
