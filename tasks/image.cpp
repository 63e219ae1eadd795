// Image: synthetic 32x32 grayscale images of 10 shape classes, read as 1,024 pixel tokens, standing
// in for LRA's sequential CIFAR-10 (Tay et al. 2021, §2.2.4): a flattened image whose class needs
// the global shape, not one local patch.
//
// Classes (the `text` field names them): 0 disc, 1 square, 2 triangle, 3 cross, 4 ring, 5 stripes
// (parallel bars filling a disc), 6 checker (a checkerboard square), 7 blob (a smooth irregular
// star-shaped outline), 8 line (one long bar), 9 dots (4-7 small dots). Every image draws: the shape
// radius 6-12 px, a centre keeping it (mostly) inside, a rotation, an aspect ratio 0.8-1.25; a
// background level 30-225 with a linear ramp of up to +-25; a foreground 50-120 levels brighter or
// darker; pixel noise N(0, s) with s up to `noise`; up to `clutter` small specks of random
// intensity. Shapes are drawn with 4x4 supersampling (anti-aliased edges).
// Classes are balanced exactly: every block of 10 consecutive indices holds each class once, in a
// random order. Tokens are gray level + 1 (0 = padding; vocabulary 257); black_is_padding=true gives
// LRA's convention (token = gray level; black counts as padding; vocabulary 256).
// One Philox stream per image, (seed, data, kImageStream, split).child(index).
#include <algorithm>
#include <array>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "io/png.hpp"
#include "attnbench/rng.hpp"
#include "attnbench/task_helpers.hpp"
#include "gray_tokens.hpp"
#include "preset_sizes.hpp"

namespace {

using ab::Json;

constexpr uint64_t kImageStream = 0x496D6167655368ull;  // "ImageSh"
constexpr ab::preset_sizes::Sizes kSizes = {{10000, 1000, 1000}, {45000, 5000, 10000}};
constexpr int kSide = 32, kSuper = 4;
constexpr double kPi = 3.14159265358979323846;
constexpr std::array<const char*, 10> kClassNames = {"disc",    "square",  "triangle", "cross", "ring",
                                                     "stripes", "checker", "blob",     "line",  "dots"};

// The shape of one image in its own frame: (u, v) = rotated, scaled offsets from the centre.
struct Shape {
  int cls = 0;
  double stripe_freq = 2.5, blob_phase[3] = {0, 0, 0}, blob_amp[3] = {0, 0, 0};
  std::vector<std::array<double, 2>> dots;

  bool inside(double u, double v) const {
    const double r2 = u * u + v * v;
    switch (cls) {
      case 0: return r2 <= 1.0;
      case 1: return std::max(std::fabs(u), std::fabs(v)) <= 0.8;
      case 2: return v >= -0.5 && v <= 1.0 - std::sqrt(3.0) * std::fabs(u);
      case 3: return (std::fabs(u) <= 0.26 && std::fabs(v) <= 1.0) || (std::fabs(v) <= 0.26 && std::fabs(u) <= 1.0);
      case 4: return r2 <= 1.0 && r2 >= 0.55 * 0.55;
      case 5: {
        if (r2 > 1.0) return false;
        const double t = (u + 1.0) * stripe_freq;
        return t - std::floor(t) < 0.5;
      }
      case 6: {
        if (std::max(std::fabs(u), std::fabs(v)) > 0.9) return false;
        const int a = static_cast<int>(std::floor((u + 0.9) * 2.5)), b = static_cast<int>(std::floor((v + 0.9) * 2.5));
        return (a + b) % 2 == 0;
      }
      case 7: {
        const double th = std::atan2(v, u);
        double r = 0.72;
        for (int k = 0; k < 3; ++k) r *= 1.0 + blob_amp[k] * std::sin((k + 2) * th + blob_phase[k]);
        return r2 <= r * r;
      }
      case 8: return std::fabs(v) <= 0.13 && std::fabs(u) <= 1.15;
      case 9:
        for (const auto& d : dots)
          if ((u - d[0]) * (u - d[0]) + (v - d[1]) * (v - d[1]) <= 0.2 * 0.2) return true;
        return false;
    }
    return false;
  }
};

class Image : public ab::preset_sizes::Task, public ab::ImageTask {
 public:
  static ab::TaskSpec spec() {
    using ab::null_int_param;
    return ab::task_spec(
        "image", "Synthetic 32x32 grayscale shapes, 10 classes, as 1,024 pixel tokens (sequential CIFAR-10 stand-in)",
        "Tay et al. 2021, Long Range Arena (sequential image classification); synthetic stand-in",
        ab::preset_sizes::after(
            {
                ab::enum_param(
                    "preset", "small", {"small", "lra"},
                    "defaults of the null split sizes: small = 10,000 / 1,000 / 1,000; lra = CIFAR-10's 45,000 / "
                    "5,000 / 10,000"),
                ab::num_param("noise", 12.0,
                              "largest standard deviation of the pixel noise (each image draws 0..noise)", 0.0, 128.0),
                ab::int_param("clutter", 3, "largest number of small random specks per image", 0, 64),
                ab::gray::black_is_padding_param(),
            },
            "images", kSizes, "lra"));
  }

  Image(const Json& p, uint64_t seed) : Task("image", p, seed, "lra"), tokens_(p) {
    resolve_sizes(kSizes);
    noise_ = p.at("noise").get<double>();
    clutter_ = static_cast<int>(p.at("clutter").get<int64_t>());
  }

  ab::TaskKind kind() const override { return ab::TaskKind::classify; }
  int64_t vocab_size() const override { return tokens_.vocab_size(); }
  int64_t num_classes() const override { return 10; }
  int64_t seq_len() const override { return kSide * kSide; }
  Json stats() const override { return {{"classes", kClassNames}}; }
  int64_t image_height() const override { return kSide; }
  int64_t image_width() const override { return kSide; }
  std::vector<uint8_t> image_pixels(const ab::Example& ex) const override { return tokens_.pixels(ex.input); }

  ab::Example example(ab::Split s, int64_t index) const override {
    const ab::RngStream base = split_stream(kImageStream, checked_split(s, index));
    // Balanced classes: a random permutation of the 10 classes per block of 10 indices.
    ab::RngStream order = base.child(static_cast<uint64_t>(index / 10) | (uint64_t{1} << 63));
    std::array<int, 10> perm{};
    for (int c = 0; c < 10; ++c) perm[c] = c;
    for (int c = 9; c > 0; --c) std::swap(perm[c], perm[order.below(static_cast<uint64_t>(c + 1))]);
    const int cls = perm[index % 10];
    ab::RngStream rng = base.child(static_cast<uint64_t>(index));
    ab::Example ex;
    ex.input = tokens_.of(render(cls, rng));
    ex.target = {cls};
    ex.text = kClassNames[static_cast<size_t>(cls)];
    return ex;
  }

 private:
  std::vector<uint8_t> render(int cls, ab::RngStream& rng) const {
    Shape shape;
    shape.cls = cls;
    const double radius = 6.0 + 6.0 * rng.uniform_double();
    const double cy = radius * 0.8 + (kSide - 1 - 1.6 * radius) * rng.uniform_double();
    const double cx = radius * 0.8 + (kSide - 1 - 1.6 * radius) * rng.uniform_double();
    const double angle = 2 * kPi * rng.uniform_double();
    const double aspect = std::exp(std::log(0.8) + (std::log(1.25) - std::log(0.8)) * rng.uniform_double());
    shape.stripe_freq = 2.0 + 1.0 * rng.uniform_double();
    for (int k = 0; k < 3; ++k) {
      shape.blob_phase[k] = 2 * kPi * rng.uniform_double();
      shape.blob_amp[k] = 0.12 + 0.18 * rng.uniform_double();
    }
    if (cls == 9) {
      const int n = 4 + static_cast<int>(rng.below(4));
      for (int tries = 0; static_cast<int>(shape.dots.size()) < n && tries < 200; ++tries) {
        const double a = 2 * kPi * rng.uniform_double(), r = 0.8 * std::sqrt(rng.uniform_double());
        const std::array<double, 2> d = {r * std::cos(a), r * std::sin(a)};
        bool apart = true;
        for (const auto& e : shape.dots) apart &= (d[0] - e[0]) * (d[0] - e[0]) + (d[1] - e[1]) * (d[1] - e[1]) >= 0.2;
        if (apart) shape.dots.push_back(d);
      }
    }
    // Levels: background, ramp, foreground contrast of either sign (kept inside 0..255).
    const double bg = 30 + 195 * rng.uniform_double();
    const double ramp = 25 * rng.uniform_double(), ramp_dir = 2 * kPi * rng.uniform_double();
    const double contrast = 50 + 70 * rng.uniform_double();
    bool brighter = rng.below(2) == 1;
    if (bg + contrast > 255) brighter = false;
    if (bg - contrast < 0) brighter = true;
    const double fg = brighter ? bg + contrast : bg - contrast;
    const double sigma = noise_ * rng.uniform_double();
    const double ca = std::cos(angle), sa = std::sin(angle);
    std::vector<double> img(kSide * kSide);
    for (int y = 0; y < kSide; ++y)
      for (int x = 0; x < kSide; ++x) {
        int hits = 0;
        for (int sy = 0; sy < kSuper; ++sy)
          for (int sx = 0; sx < kSuper; ++sx) {
            const double py = y + (sy + 0.5) / kSuper - 0.5 - cy, px = x + (sx + 0.5) / kSuper - 0.5 - cx;
            const double u = (ca * px + sa * py) / (radius * aspect), v = (-sa * px + ca * py) / (radius / aspect);
            hits += shape.inside(u, v);
          }
        const double cover = static_cast<double>(hits) / (kSuper * kSuper);
        const double base_level =
            bg + ramp * ((x - kSide / 2.0) * std::cos(ramp_dir) + (y - kSide / 2.0) * std::sin(ramp_dir)) / (kSide / 2.0);
        img[y * kSide + x] = base_level + (fg - bg) * cover;
      }
    const int specks = clutter_ > 0 ? static_cast<int>(rng.below(static_cast<uint64_t>(clutter_ + 1))) : 0;
    for (int i = 0; i < specks; ++i) {
      const int sy = static_cast<int>(rng.below(kSide - 1)), sx = static_cast<int>(rng.below(kSide - 1));
      const int size = 1 + static_cast<int>(rng.below(2));
      const double level = 255 * rng.uniform_double();
      for (int dy = 0; dy < size; ++dy)
        for (int dx = 0; dx < size; ++dx) img[(sy + dy) * kSide + sx + dx] = level;
    }
    std::vector<uint8_t> out(img.size());
    for (size_t i = 0; i < img.size(); ++i) {
      const double v = img[i] + (sigma > 0 ? sigma * rng.normal() : 0.0);
      out[i] = static_cast<uint8_t>(std::clamp(std::lround(v), 0L, 255L));
    }
    return out;
  }

  double noise_ = 12;
  int clutter_ = 3;
  ab::gray::Tokens tokens_;
};

}  // namespace

ATTNBENCH_REGISTER_TASK(Image);
