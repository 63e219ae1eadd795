#pragma once
// PNG input and output for image tasks (previews, LRA Pathfinder files), through Debian's libspng
// (libspng-dev, which inflates with zlib).
//
// Writer: 8-bit grayscale, non-interlaced (libspng's encoder picks the row filters and compresses).
// Reader: every PNG the format allows (bit depths 1 to 16, every colour type, Adam7 interlacing);
// colour is reduced to gray with ITU-R 601 weights (0.299 R + 0.587 G + 0.114 B) of the 8-bit
// samples (16-bit samples keep their high byte), alpha, gamma and colour profiles are ignored.
// Bounds, so that a hostile file costs at most what an honest one of the allowed size costs:
//  * sides above `max_side` are refused before anything is allocated (no task reads larger ones);
//  * the image data may not inflate beyond the size the header declares (a decompression bomb is
//    refused, not read to its end), and must end where the image ends (a zlib stream checked to its
//    Adler-32);
//  * compressed metadata (text, ICC profiles) inflates to at most 1 MiB per chunk and 4 MiB in
//    all, at most 1000 such chunks; the file may not be larger than an image of `max_side` needs
//    plus 16 MiB of other chunks.
// libspng's lenient choices stand: a palette index past the palette's end reads as black, and an
// ancillary chunk with a bad CRC is dropped.
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
// Decodes PNG bytes to gray; throws std::runtime_error naming the problem ("PNG: " and libspng's
// or our description: bad CRC, truncated image data, larger than max_side, ...).
// Images wider or taller than `max_side` are refused (kMaxPngSide at most: no task reads larger).
inline constexpr int64_t kMaxPngSide = 4096;
GrayImage decode_png_gray(const std::vector<uint8_t>& bytes, int64_t max_side = kMaxPngSide);
// The same for a file; the message starts with the path. Reading stops, and the file is refused,
// once it passes max_png_file_bytes() (devices and pipes included).
GrayImage read_png_gray(const std::string& path, int64_t max_side = kMaxPngSide);
// The largest PNG file an image of at most max_side x max_side may take (see above).
uint64_t max_png_file_bytes(int64_t max_side);

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
