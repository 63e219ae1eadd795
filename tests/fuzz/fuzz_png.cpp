// The PNG reader, the core of the Pathfinder loader (read_png_gray reads a file and calls
// decode_png_gray): any bytes give an image within the side limit or a std::runtime_error naming
// the problem. Anything else escaping (bad_alloc included: the limits exist so that no input can
// ask for much memory), a crash or a sanitizer report is a finding. A decoded image must also
// decode the same at exactly its size, be refused one pixel smaller, and survive the writer.
// The limit is Pathfinder's largest side (256), what the loader passes for the first image.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <vector>

#include "io/png.hpp"

namespace {

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "finding: %s\n", what.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  constexpr int64_t kSide = 256;
  const std::vector<uint8_t> bytes(data, data + size);
  ab::GrayImage img;
  try {
    img = ab::decode_png_gray(bytes, kSide);
  } catch (const std::runtime_error& e) {
    if (std::string(e.what()).rfind("PNG: ", 0) != 0) finding(std::string("an error without the PNG prefix: ") + e.what());
    return 0;
  } catch (const std::exception& e) {
    finding(std::string("a ") + typeid(e).name() + " escaped instead of a runtime_error: " + e.what());
  }
  if (img.width < 1 || img.height < 1 || img.width > kSide || img.height > kSide)
    finding("decoded a " + std::to_string(img.width) + " x " + std::to_string(img.height) + " image past the limit");
  if (img.pixels.size() != static_cast<size_t>(img.width * img.height)) finding("pixel count differs from the size");
  try {
    const int64_t side = std::max(img.width, img.height);
    if (ab::decode_png_gray(bytes, side).pixels != img.pixels) finding("a different image at its own size limit");
    if (side > 1) {
      bool refused = false;
      try {
        ab::decode_png_gray(bytes, side - 1);
      } catch (const std::runtime_error&) {
        refused = true;
      }
      if (!refused) finding("an image one pixel above the limit was accepted");
    }
    if (ab::decode_png_gray(ab::encode_png_gray(img), side).pixels != img.pixels) finding("the writer's round trip differs");
  } catch (const std::exception& e) {
    finding(std::string("a valid image failed a second read: ") + e.what());
  }
  return 0;
}
