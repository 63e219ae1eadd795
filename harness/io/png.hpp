#pragma once
// Minimal PNG support without external libraries, for image tasks (previews, LRA Pathfinder files).
//
// Writer: 8-bit grayscale, non-interlaced, filter 0 on every row, the zlib stream made of deflate
// "stored" (uncompressed) blocks; CRC-32 per chunk and Adler-32 of the stream as the format asks.
// Reader: non-interlaced PNGs of bit depth 8 (or 16, reduced to the high byte) in every colour type
// (gray, gray+alpha, RGB, RGBA, palette), all five row filters, and a full inflate (stored, fixed
// and dynamic Huffman blocks, RFC 1950/1951), so files written by PIL, scipy or libpng read too.
// Colour is reduced to gray with ITU-R 601 weights (0.299 R + 0.587 G + 0.114 B), alpha ignored.
// Not supported (a clear error): interlaced (Adam7) images, bit depths 1/2/4, preset dictionaries.
#include <cstdint>
#include <string>
#include <vector>

#include "attnbench/task.hpp"

namespace ab {

struct GrayImage {
  int64_t width = 0, height = 0;
  std::vector<uint8_t> pixels;  // row-major, height * width
};

// PNG file bytes of an 8-bit grayscale image (pixels.size() must be width * height).
std::vector<uint8_t> encode_png_gray(const GrayImage& image);
// Writes the file; throws std::runtime_error when it cannot.
void write_png_gray(const std::string& path, const GrayImage& image);
// Decodes PNG bytes to gray; throws std::runtime_error naming the problem (bad CRC, truncated
// stream, unsupported feature, ...).
// Images wider or taller than `max_side` are refused (no task reads larger ones), and the pixel
// data may not inflate beyond the size the header declares.
inline constexpr int64_t kMaxPngSide = 4096;
GrayImage decode_png_gray(const std::vector<uint8_t>& bytes, int64_t max_side = kMaxPngSide);
GrayImage read_png_gray(const std::string& path, int64_t max_side = kMaxPngSide);

// The zlib pieces, exposed for tests.
uint32_t crc32(const uint8_t* data, size_t n, uint32_t crc = 0);
uint32_t adler32(const uint8_t* data, size_t n, uint32_t adler = 1);
// Inflates a zlib stream (RFC 1950 header + deflate data + Adler-32, checked); more than
// `max_out` bytes of output is an error.
std::vector<uint8_t> zlib_inflate(const uint8_t* data, size_t n, size_t max_out = SIZE_MAX);

// Implemented by tasks whose inputs are images (image, pathfinder): lets tools draw them.
class ImageTask {
 public:
  virtual ~ImageTask() = default;
  virtual int64_t image_height() const = 0;
  virtual int64_t image_width() const = 0;
  // The gray levels 0..255 of an example's input, row-major (undoes the token offset).
  virtual std::vector<uint8_t> image_pixels(const Example& ex) const = 0;
};

// A grid of the first `count` examples of `split`, each enlarged to at least 64 px with its label
// printed underneath (3x5 pixel digits). Returns false, writing nothing, when the task has no
// images (it does not implement ImageTask); throws std::runtime_error when the file cannot be
// written. Meant for `attnbench data --png FILE`.
bool write_preview_png(const Task& task, Split split, int64_t count, const std::string& path);

}  // namespace ab
