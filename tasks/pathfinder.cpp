// Pathfinder / Path-X (Long Range Arena; images after Linsley et al. 2018 and Kim et al. 2020): two
// round markers on an image of dashed curves; the label says whether one curve joins them.
//
// The generator draws as the "snakes" code of drewlinsley/pathfinder (snakes2.py / snakes.py at
// ab9c130, the code LRA's 2020 release was drawn with) draws, with LRA's settings per resolution
// (lra_benchmarks/data/pathfinder.py; tasks.md §7.2-7.3). Re-implemented from reading it:
//  * A paddle is a line of paddle_length L drawn at 2x (antialias_scale) with width
//    round(2 * thickness) and Lanczos-downsampled to (2 * (L + ceil(thickness) + m) + 1)^2 pixels
//    (PIL's 8-bit two-pass resampler); its mask is the 2x line dilated by a disc of radius 2m,
//    downsampled the same way. Values are u8 / 255. A paddle is drawn from a pixel (its tail, or a
//    head drawn backwards); the sprite depends only on the orientation, so sprites are cached.
//  * The occupancy mask starts as the padding border. One margin m per image.
//  * Targets: tail 1 uniform among the pixels where the paddle's mask (pixels = 255) does not
//    meet a mask value > 0.3, with a border of 2 * seed_distance blocked; orientation an integer
//    degree in [-180, 180); head = ceil(tail + L dir), pivot = ceil(head + (L + m) dir(reversed));
//    3 trials against head / pivot leaving the image. Tail 2 = round(tail 1 + seed_distance *
//    (sin a, cos a)), a an integer degree, no mask test. Failures restart the image.
//  * Growth, both targets alternately, contour_length - 1 paddles: P' = ceil(pivot + (L + 2m)
//    dir); candidate heads = the pixels (truncated) of points on the circle of radius L + m about
//    P', one pixel of arc apart, deduplicated; weight (1 - mask dilated by a disc of radius m) *
//    max(cos(min(continuity * |turn|, pi/2)), 0)^2, dead end below 1e-4; a sampled head is kept
//    when max(mask + paddle mask) < 1.8 (3 draws). Keeping a paddle adds the snake's PREVIOUS
//    paddle's mask to the occupancy mask; after growth only target 2's last mask is added (as in
//    the original: target 1's last paddle is never masked).
//  * Distractors: num_distractor_snakes of distractor_length paddles, seeded like tail 1 (1-pixel
//    border) when at least 1% of the pixels have mask <= 0.3, 5 attempts each, else dropped.
//  * Intensities: targets paddle_contrast * snake_contrast, distractors snake_contrast, markers
//    discs of marker_radius drawn at 2x and downsampled (value u8 / 255) on the origin tip of a
//    random target and the terminal tip of the same (label 1) or the other target (label 0);
//    pixelwise maximum; the image is scaled so its maximum is 255 (old scipy imsave: + 0.5,
//    truncated). The label is drawn independently of the drawing.
// tests/python/test_pathfinder_stats.py compares this generator's images with statistics of the
// original's own output (scripts/pathfinder_original.py runs it). Known differences:
//  - Lines wider than one 2x pixel (resolutions 64, 128, 256) are filled as the pixels whose
//    centres lie in the line's rectangle, not with PIL's polygon rules (32 px draws 1-px lines,
//    which follow PIL's Bresenham exactly). No single-paddle distractors (the wrapper's setting).
//  - Labels are as the original's: by construction, not by connectivity. Snakes are kept apart by
//    the masks only, so a distractor or the other target may touch a path; the connectivity
//    check in tests/tasks/test_tasks.cpp asks for the original's agreement rate, not 100%.
//  - One Philox stream per image, (seed, data, kPathfinderStream, split).child(index): any image is
//    generated on demand; generated images are kept in memory up to cache_mb.
//  - Tokens: gray level + 1, so 0 stays padding (vocabulary 257); black_is_padding=true gives LRA's
//    convention instead (token = gray level, black pixels count as padding; vocabulary 256).
// source=lra_files reads the LRA release instead (see lra_loaders.hpp): metadata order, split
// 80/10/10 as LRA does; empty images are not filtered.
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "io/lra_loaders.hpp"
#include "io/png.hpp"
#include "attnbench/rng.hpp"
#include "attnbench/task_helpers.hpp"
#include "gray_tokens.hpp"
#include "preset_sizes.hpp"

namespace {

using ab::Json;

constexpr uint64_t kPathfinderStream = 0x5061746846696Eull;  // "PathFin"
constexpr ab::preset_sizes::Sizes kSizes = {{20000, 2000, 2000}, {160000, 20000, 20000}};
constexpr int kPaddleTrials = 3;        // max_paddle_retrial (2) + 1
constexpr int kDistractorAttempts = 5;  // max_distractor_contour_retrial (4) + 1
constexpr int kMaxRestarts = 100000;    // per image, then the settings are declared impossible
constexpr int kAA = 2;                  // antialias_scale, 2 at every LRA resolution
constexpr double kPi = 3.14159265358979323846;
constexpr int kMinResolution = 32, kMaxResolution = 256;  // the resolution parameter's range

// LRA's TFDS builder docstrings (tasks.md §7.3) plus the wrapper defaults.
struct Resolution {
  int size, padding, paddle_length;
  double thickness;
  std::vector<int> margins;
  int seed_distance;
  double marker_radius, continuity;
  int distractor_budget;  // num_distractor_snakes = budget // distractor_length
  double snake_contrast, paddle_contrast;
};

const Resolution& resolution_of(int size) {
  static const std::array<Resolution, 4> table = {{
      {32, 1, 2, 0.5, {1}, 7, 1.5, 1.0, 20, 2.0, 0.75},
      {64, 1, 5, 1.0, {1}, 12, 2.5, 1.8, 22, 0.8, 1.0},
      {128, 1, 5, 1.5, {2, 3}, 20, 3.0, 1.8, 35, 0.9, 1.0},
      {256, 22, 5, 2.0, {3}, 27, 5.0, 1.8, 30, 1.0, 1.0},
  }};
  for (const auto& r : table)
    if (r.size == size) return r;
  throw ab::UsageError(fmt::format(
      "task 'pathfinder': resolution = {} is not one of LRA's 32, 64, 128 (Path-X), 256; nearest valid value: {}",
      size, size < 48 ? 32 : size < 96 ? 64 : size < 192 ? 128 : 256));
}

// PIL's Lanczos (a = 3) resampling of one axis from `in` to `out` samples, 8-bit fixed point
// (22 fractional bits, coefficients rounded away from zero), as Image.resize(..., LANCZOS).
struct Axis {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> k;
  Axis(int in, int out) {
    const double scale = static_cast<double>(in) / out, fscale = std::max(scale, 1.0), support = 3.0 * fscale;
    ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    first.resize(static_cast<size_t>(out));
    count.resize(static_cast<size_t>(out));
    k.assign(static_cast<size_t>(out) * static_cast<size_t>(ksize), 0);
    auto sinc = [](double x) { return x == 0.0 ? 1.0 : std::sin(x * kPi) / (x * kPi); };
    std::vector<double> w(static_cast<size_t>(ksize));
    for (int i = 0; i < out; ++i) {
      const double centre = (i + 0.5) * scale;
      const int lo = std::max(static_cast<int>(centre - support + 0.5), 0);
      const int n = std::min(static_cast<int>(centre + support + 0.5), in) - lo;
      double sum = 0;
      for (int x = 0; x < n; ++x) {
        const double t = (x + lo - centre + 0.5) / fscale;
        w[static_cast<size_t>(x)] = (t >= -3.0 && t < 3.0) ? sinc(t) * sinc(t / 3.0) : 0.0;
        sum += w[static_cast<size_t>(x)];
      }
      first[static_cast<size_t>(i)] = lo;
      count[static_cast<size_t>(i)] = n;
      for (int x = 0; x < n; ++x) {
        const double v = (sum != 0.0 ? w[static_cast<size_t>(x)] / sum : w[static_cast<size_t>(x)]) * (1 << 22);
        k[static_cast<size_t>(i) * ksize + x] = static_cast<int32_t>(v < 0 ? v - 0.5 : v + 0.5);
      }
    }
  }
  static uint8_t clip8(int64_t v) { return v >= (int64_t{255} << 22) ? 255 : v <= 0 ? 0 : static_cast<uint8_t>(v >> 22); }
  // One output sample from in[first .. first + count) (stride apart).
  uint8_t apply(int i, const uint8_t* in, int stride) const {
    int64_t s = int64_t{1} << 21;
    const int32_t* kk = &k[static_cast<size_t>(i) * ksize];
    const int lo = first[static_cast<size_t>(i)], n = count[static_cast<size_t>(i)];
    for (int x = 0; x < n; ++x) s += static_cast<int64_t>(in[(lo + x) * stride]) * kk[x];
    return clip8(s);
  }
};

// Downsamples an ih x iw 8-bit image to oh x ow, rows first then columns (PIL's order, with an
// 8-bit intermediate), writing only the output rows [r0, r1) and columns [c0, c1) and reading
// only input rows [ir0, ir1) (the input is zero elsewhere).
void resample(const uint8_t* in, int iw, const Axis& ax_w, const Axis& ax_h, int ow, int r0, int r1, int c0, int c1,
              int ir0, int ir1, uint8_t* out, std::vector<uint8_t>& tmp) {
  tmp.assign(static_cast<size_t>(ir1 - ir0 + 1) * static_cast<size_t>(ow), 0);
  for (int y = ir0; y < ir1; ++y)
    for (int x = c0; x < c1; ++x) tmp[static_cast<size_t>(y - ir0) * ow + x] = ax_w.apply(x, in + static_cast<size_t>(y) * iw, 1);
  for (int y = r0; y < r1; ++y)
    for (int x = c0; x < c1; ++x) {
      int64_t s = int64_t{1} << 21;
      const int32_t* kk = &ax_h.k[static_cast<size_t>(y) * ax_h.ksize];
      const int lo = ax_h.first[static_cast<size_t>(y)], n = ax_h.count[static_cast<size_t>(y)];
      for (int t = std::max(lo, ir0); t < std::min(lo + n, ir1); ++t)
        s += static_cast<int64_t>(tmp[static_cast<size_t>(t - ir0) * ow + x]) * kk[t - lo];
      out[static_cast<size_t>(y) * ow + x] = Axis::clip8(s);
    }
}

// One paddle drawn from its start pixel at `theta`: line and mask on a (2 * half + 1)^2 grid
// centred on the start pixel, and the seed structuring element (mask pixels equal to 1).
struct Sprite {
  int half = 0;
  std::vector<uint8_t> line, mask;
  std::vector<double> linef;  // line / 255
  std::vector<float> maskf;   // mask / 255, as the original's float32 masks
  std::vector<std::array<int, 2>> seed_struct;  // (dy, dx) about the anchor
  // The pixels that matter, as offsets from the start pixel (every other one is a no-op: images
  // and masks are >= 0 and combined with max): line > 0, mask > 0, and the mask pixels that can
  // reach the overlap threshold 1.8 against the occupancy mask's largest value, 1.
  struct Px {
    int dy, dx;
    double line;
    float mask;
  };
  std::vector<Px> line_px, mask_px, hard_px;
  std::vector<std::ptrdiff_t> hard_off;  // hard_px as offsets in the padded mask
  // Some pixel of the image has every cell of seed_struct outside the image. OpenCV's dilate then
  // gives it -FLT_MAX, ceil(... - 0.3) is negative, and snakes.find_available_coordinates reports
  // no free pixel at all: a seed at this orientation always fails.
  bool seeds_nowhere = false;
  // Where target 1's tail may go (row-major pixel indices): on the empty image only the border of
  // 2 * seed_distance blocks it, so this depends on the orientation alone.
  std::vector<int> first_seeds;
};

int ceil_int(double v) { return static_cast<int>(std::ceil(v)); }

// The occupancy mask is kept with a border of zeros at least a sprite's half-size wide, so reads
// about a pixel of the image need no bounds checks (0 is what the original's clipping gives there:
// masks are >= 0 and combined with max; 0 + a paddle's mask value never reaches 1.8).
int mask_pad(const Resolution& res) {
  return res.paddle_length + ceil_int(res.thickness) + *std::max_element(res.margins.begin(), res.margins.end());
}

Sprite make_sprite(const Resolution& res, int m, double theta) {
  Sprite sp;
  const int L = res.paddle_length;
  sp.half = L + ceil_int(res.thickness) + m;
  const int S = 2 * sp.half + 1, Sb = 2 * sp.half * kAA + 1, c = sp.half * kAA;
  const int width = static_cast<int>(std::lround(res.thickness * kAA));
  // snakes.translate_coord: pixel = ceil(coordinate).
  const int hy = ceil_int(c + static_cast<double>(L * kAA) * std::sin(theta));
  const int hx = ceil_int(c + static_cast<double>(L * kAA) * std::cos(theta));
  std::vector<uint8_t> line(static_cast<size_t>(Sb) * Sb, 0), mask(line.size(), 0);
  auto put = [&](int y, int x) {
    if (y >= 0 && y < Sb && x >= 0 && x < Sb) line[static_cast<size_t>(y) * Sb + x] = 255;
  };
  if (width <= 1) {  // PIL's one-pixel line: Bresenham from the start, then the end point
    put(hy, hx);
    int dx = hx - c, dy = hy - c, xs = dx < 0 ? -1 : 1, ys = dy < 0 ? -1 : 1, x = c, y = c;
    dx = std::abs(dx);
    dy = std::abs(dy);
    if (dx >= dy) {
      int e = 2 * dy - dx;
      for (int i = 0; i < dx; ++i, x += xs) {
        put(y, x);
        if (e >= 0 && dy > 0) y += ys, e -= 2 * dx;
        e += 2 * dy;
      }
    } else {
      int e = 2 * dx - dy;
      for (int i = 0; i < dy; ++i, y += ys) {
        put(y, x);
        if (e >= 0 && dx > 0) x += xs, e -= 2 * dy;
        e += 2 * dx;
      }
    }
  } else {  // a wide line: pixel centres inside the rectangle of that width about the segment
    const double ly = hy - c, lx = hx - c, len = std::hypot(ly, lx), hw = width / 2.0;
    for (int y = 0; y < Sb; ++y)
      for (int x = 0; x < Sb; ++x) {
        const double py = y - c, px = x - c;
        const double along = len > 0 ? (py * ly + px * lx) / len : 0, across = len > 0 ? (px * ly - py * lx) / len : std::hypot(py, px);
        if (along >= -1e-9 && along <= len + 1e-9 && std::fabs(across) <= hw - 0.5 + 1e-9) put(y, x);
      }
  }
  // The mask: the 2x line dilated by a disc of radius 2m (snakes.generate_dilation_struct).
  const int r = m * kAA;
  for (int y = 0; y < Sb; ++y)
    for (int x = 0; x < Sb; ++x) {
      if (!line[static_cast<size_t>(y) * Sb + x]) continue;
      for (int dy = -r; dy <= r; ++dy)
        for (int dx = -r; dx <= r; ++dx)
          if (dy * dy + dx * dx <= r * r && y + dy >= 0 && y + dy < Sb && x + dx >= 0 && x + dx < Sb)
            mask[static_cast<size_t>(y + dy) * Sb + x + dx] = 255;
    }
  const Axis ax(Sb, S);
  std::vector<uint8_t> tmp;
  sp.line.resize(static_cast<size_t>(S) * S);
  sp.mask.resize(sp.line.size());
  resample(line.data(), Sb, ax, ax, S, 0, S, 0, S, 0, Sb, sp.line.data(), tmp);
  resample(mask.data(), Sb, ax, ax, S, 0, S, 0, S, 0, Sb, sp.mask.data(), tmp);
  for (size_t i = 0; i < sp.line.size(); ++i) {
    sp.linef.push_back(sp.line[i] / 255.0);
    sp.maskf.push_back(static_cast<float>(sp.mask[i] / 255.0));
  }
  for (int y = 0; y < S; ++y)
    for (int x = 0; x < S; ++x) {
      const size_t i = static_cast<size_t>(y) * S + x;
      const Sprite::Px px{y - sp.half, x - sp.half, sp.linef[i], sp.maskf[i]};
      if (sp.line[i]) sp.line_px.push_back(px);
      if (sp.mask[i]) sp.mask_px.push_back(px);
      if (1.0 + static_cast<double>(sp.maskf[i]) >= 1.8) sp.hard_px.push_back(px);
    }
  const std::ptrdiff_t W = res.size + 2 * mask_pad(res);
  for (const auto& q : sp.hard_px) sp.hard_off.push_back(q.dy * W + q.dx);
  // The seed element: the sprite placed with its start at (L + m + 1, L + m + 1) of a
  // (2 (L + m) + 1)^2 window (snakes2.initialize_two_seeds' struct_head), pixels equal to 1,
  // about the window's centre (OpenCV's default anchor).
  const int w = 2 * (L + m) + 1, a = L + m;
  for (int y = 0; y < w; ++y)
    for (int x = 0; x < w; ++x) {
      const int sy = y - (a + 1) + sp.half, sx = x - (a + 1) + sp.half;
      if (sy >= 0 && sy < S && sx >= 0 && sx < S && sp.mask[static_cast<size_t>(sy) * S + sx] == 255)
        sp.seed_struct.push_back({y - a, x - a});
    }
  const int R = res.size;
  for (int y = 0; y < R && !sp.seeds_nowhere; ++y)
    for (int x = 0; x < R && !sp.seeds_nowhere; ++x) {
      bool any = false;
      for (const auto& d : sp.seed_struct) any |= y + d[0] >= 0 && y + d[0] < R && x + d[1] >= 0 && x + d[1] < R;
      sp.seeds_nowhere = !any;
    }
  const int lo = 2 * res.seed_distance, hi = R - 2 * res.seed_distance;
  for (int y = 0; y < R && !sp.seeds_nowhere; ++y)
    for (int x = 0; x < R; ++x) {
      bool ok = true;
      for (const auto& d : sp.seed_struct) {
        const int yy = y + d[0], xx = x + d[1];
        if (yy >= 0 && yy < R && xx >= 0 && xx < R && (yy < lo || yy >= hi || xx < lo || xx >= hi)) ok = false;
      }
      if (ok) sp.first_seeds.push_back(y * R + x);
    }
  return sp;
}

using P2 = std::array<int, 2>;

// sin and cos of an integer degree d in [-180, 360) as d * pi / 180 radians, and of the reversed
// direction (snakes' seed orientations and tail-2 angles), computed once with the same expressions
// the drawing used to evaluate per call.
struct DegreeTrig {
  std::array<double, 540> sin{}, cos{}, rsin{}, rcos{};
  DegreeTrig() {
    for (int d = -180; d < 360; ++d) {
      const double t = static_cast<double>(d) * kPi / 180.0, r = t + kPi < kPi ? t + kPi : t - kPi;
      sin[static_cast<size_t>(d + 180)] = std::sin(t);
      cos[static_cast<size_t>(d + 180)] = std::cos(t);
      rsin[static_cast<size_t>(d + 180)] = std::sin(r);
      rcos[static_cast<size_t>(d + 180)] = std::cos(r);
    }
  }
  static const DegreeTrig& get() {
    static const DegreeTrig t;
    return t;
  }
};

// max(cos(min(continuity * |turn|, pi / 2)), 0)^2
double turn_weight(double continuity, double phi, double theta) {
  double delta = std::fabs(phi - theta);
  delta = std::min(std::min(delta, 2 * kPi - delta) * continuity, 0.5 * kPi);
  const double w = std::max(std::cos(delta), 0.0);
  return w * w;
}

// Candidate heads about an (integer) pivot P for one margin m: P + floor(rho * (sin a, cos a)),
// rho = L + m, for a one pixel of arc apart, deduplicated and in numpy.unique's order; with their
// directions, sprites and turn weights (they depend on the margin only, so one table per task).
struct Ring {
  P2 off;
  double phi, sin, cos;
  const Sprite* sp;  // the paddle drawn back from this head
};
struct Turn {
  size_t k;  // ring index
  double w;  // turn weight > 0
};
struct RingTable {
  std::vector<Ring> ring;
  // The heads a snake heading ring[j].phi (turns[j]) or a seed degree d (seed_turns[d + 180]) may
  // turn to: ring order, turn weight > 0 only.
  std::vector<std::vector<Turn>> turns, seed_turns;
};

// Sprites by (margin, orientation) and ring tables by margin; shared by the images of one task
// (maps guarded by mu). Sprites live as long as the task, so images hold plain pointers; seed
// orientations (integer degrees, drawn at every restart) also have a lock-free table.
struct SpriteCache {
  std::mutex mu;
  std::unordered_map<uint64_t, std::unique_ptr<const Sprite>> map;
  std::array<std::array<std::atomic<const Sprite*>, 360>, 4> by_degree{};  // [margin][degree + 180]
  std::array<std::unique_ptr<const RingTable>, 4> rings;                    // [margin]
  const Sprite* degree(const Resolution& res, int m, int deg) {
    std::atomic<const Sprite*>& slot = by_degree[static_cast<size_t>(m)][static_cast<size_t>(deg + 180)];
    const Sprite* sp = slot.load(std::memory_order_acquire);
    if (!sp) {
      sp = get(res, m, static_cast<double>(deg) * kPi / 180.0);
      slot.store(sp, std::memory_order_release);
    }
    return sp;
  }
  const Sprite* get(const Resolution& res, int m, double theta) {
    uint64_t bits = 0;
    std::memcpy(&bits, &theta, sizeof bits);
    const uint64_t key = bits ^ (static_cast<uint64_t>(m) * 0x9E3779B97F4A7C15ull);
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = map.find(key);
      if (it != map.end()) return it->second.get();
    }
    auto sp = std::make_unique<const Sprite>(make_sprite(res, m, theta));
    std::lock_guard<std::mutex> lock(mu);
    return map.emplace(key, std::move(sp)).first->second.get();
  }
  const RingTable& ring(const Resolution& res, int m) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (rings[static_cast<size_t>(m)]) return *rings[static_cast<size_t>(m)];
    }
    auto t = std::make_unique<RingTable>();
    const int L = res.paddle_length;
    const double step = 360.0 / (2 * (L + m) * kPi), rho = L + m;  // degrees per pixel of arc
    const int n_arc = ceil_int(360.0 / step);                       // numpy.arange(0, 360, step)
    std::vector<P2> offs;
    for (int k = 0; k < n_arc; ++k) {
      const double a = (k * step) * kPi / 180.0;
      offs.push_back({static_cast<int>(std::floor(rho * std::sin(a))), static_cast<int>(std::floor(rho * std::cos(a)))});
    }
    std::sort(offs.begin(), offs.end());
    offs.erase(std::unique(offs.begin(), offs.end()), offs.end());
    for (const auto& o : offs) {
      const double phi = std::atan2(o[0], o[1]), flipped = phi < 0 ? phi + kPi : phi - kPi;
      t->ring.push_back({o, phi, std::sin(phi), std::cos(phi), get(res, m, flipped)});
    }
    auto heads = [&](double theta) {
      std::vector<Turn> v;
      for (size_t i = 0; i < t->ring.size(); ++i) {
        const double w = turn_weight(res.continuity, t->ring[i].phi, theta);
        if (w != 0) v.push_back({i, w});
      }
      return v;
    };
    for (const Ring& r : t->ring) t->turns.push_back(heads(r.phi));
    for (int d = -180; d < 180; ++d) t->seed_turns.push_back(heads(static_cast<double>(d) * kPi / 180.0));
    std::lock_guard<std::mutex> lock(mu);
    if (!rings[static_cast<size_t>(m)]) rings[static_cast<size_t>(m)] = std::move(t);
    return *rings[static_cast<size_t>(m)];
  }
};

// One drawn image with what a checker or a user may want to know about it.
struct Drawn {
  std::vector<uint8_t> gray;  // size * size
  int label = 0;
  std::array<std::array<int, 2>, 2> markers{};  // (y, x) of the two marker centres
  std::array<std::vector<std::array<int, 2>>, 2> paths;  // per target: origin tip, then each paddle's head
  int margin = 0, distractors = 0, distractors_requested = 0, restarts = 0;
};

class Canvas {
 public:
  Canvas(const Resolution& res, int contour_length, int distractor_length, int num_distractors, SpriteCache& sprites,
         ab::RngStream& rng)
      : res_(res), R_(res.size), L_(res.paddle_length), cl_(contour_length), dl_(distractor_length),
        nd_(num_distractors), sprites_(sprites), rng_(rng), trig_(DegreeTrig::get()) {
    const size_t n = static_cast<size_t>(R_) * R_;
    pad_ = mask_pad(res);
    W_ = R_ + 2 * pad_;
    image_.assign(n, 0.f);
    mask_.assign(static_cast<size_t>(W_) * W_, 0.f);
    avail_.assign(n, 0);
  }

  Drawn draw() {
    Drawn out;
    out.label = static_cast<int>(rng_.below(2));
    m_ = res_.margins.size() == 1 ? res_.margins[0]
                                  : res_.margins[rng_.below(static_cast<uint64_t>(res_.margins.size()))];
    disc_.clear();
    for (int dy = -m_; dy <= m_; ++dy)
      for (int dx = -m_; dx <= m_; ++dx)
        if (dy * dy + dx * dx <= m_ * m_) disc_.push_back(dy * W_ + dx);
    rings_ = &sprites_.ring(res_, m_);
    // The occupancy mask starts as the padding border; targets() rolls it back to this state.
    for (int y = 0; y < R_; ++y)
      for (int x = 0; x < R_; ++x)
        if (y < res_.padding || y >= R_ - res_.padding || x < res_.padding || x >= R_ - res_.padding)
          mask_[mi(y, x)] = 1.f;
    for (int restart = 0;; ++restart) {
      if (restart >= kMaxRestarts)
        throw std::runtime_error(fmt::format(
            "task 'pathfinder': no image after {} attempts at resolution {} with contour_length {}; the snakes do not "
            "fit, lower contour_length",
            kMaxRestarts, R_, cl_));
      if (!targets()) continue;
      out.restarts = restart;
      break;
    }
    out.margin = m_;
    out.distractors_requested = nd_;
    for (int d = 0; d < nd_; ++d)
      for (int attempt = 0; attempt < kDistractorAttempts; ++attempt)
        if (distractor()) {
          ++out.distractors;
          break;
        }
    const int o = static_cast<int>(rng_.below(2));
    const int t = out.label ? o : 1 - o;
    out.markers = {origin_[o], terminal_[t]};
    out.paths = paths_;
    for (const auto& c : out.markers) paint_marker(c);
    float vmax = 0;
    for (float v : image_) vmax = std::max(vmax, v);
    const double scale = vmax > 0 ? 255.0 / vmax : 255.0;
    out.gray.resize(image_.size());
    for (size_t i = 0; i < image_.size(); ++i)  // scipy's bytescale: v * 255 / max + 0.5, truncated
      out.gray[i] = static_cast<uint8_t>(std::min(255.0, image_[i] * scale + 0.5));
    return out;
  }

 private:
  // A placed paddle: its sprite and start pixel (its mask is added to mask_ later).
  struct Placed {
    const Sprite* sp = nullptr;
    P2 at{};
  };
  struct Snake {
    P2 pivot{};
    double sin = 0, cos = 0;  // of the direction theta
    Placed last;              // the newest paddle, whose mask is not yet in mask_
    int ring = -1;            // index of theta in the ring table, or -1: theta is the seed degree
    int deg = 0;
  };

  static P2 translate(P2 p, double sin, double cos, double dist) {
    return {ceil_int(p[0] + dist * sin), ceil_int(p[1] + dist * cos)};
  }
  bool inside(P2 p) const { return p[0] >= 0 && p[0] < R_ && p[1] >= 0 && p[1] < R_; }
  size_t at(int y, int x) const { return static_cast<size_t>(y) * R_ + x; }
  size_t mi(int y, int x) const { return static_cast<size_t>(y + pad_) * W_ + x + pad_; }  // mask_ index

  // Calls f(y, x, pixel) for the pixels of `px` (offsets from p.at) inside the image.
  template <class F>
  void each(const Placed& p, const std::vector<Sprite::Px>& px, F&& f) const {
    for (const auto& q : px) {
      const int y = p.at[0] + q.dy, x = p.at[1] + q.dx;
      if (static_cast<unsigned>(y) < static_cast<unsigned>(R_) && static_cast<unsigned>(x) < static_cast<unsigned>(R_))
        f(y, x, q);
    }
  }
  // Pixelwise max, so the order in which paddles are painted does not matter.
  void paint(const Placed& p, float contrast) {
    each(p, p.sp->line_px,
         [&](int y, int x, const Sprite::Px& q) {
           float& v = image_[at(y, x)];
           v = std::max(v, static_cast<float>(q.line * contrast));
         });
  }
  // Adds a paddle's mask, journalling the values it raises so that rollback() can undo it.
  void add_mask(const Placed& p) {
    each(p, p.sp->mask_px, [&](int y, int x, const Sprite::Px& q) {
      const size_t i = mi(y, x);
      if (q.mask > mask_[i]) {
        journal_.push_back({i, mask_[i]});
        mask_[i] = q.mask;
      }
    });
  }
  void rollback(size_t mark) {
    while (journal_.size() > mark) {
      mask_[journal_.back().first] = journal_.back().second;
      journal_.pop_back();
    }
  }
  bool overlaps(const Placed& p) const {  // snakes.extend_snake: max(mask + paddle mask) >= 1.8
    const float* base = &mask_[mi(p.at[0], p.at[1])];  // p.at is inside the image
    const size_t n = p.sp->hard_px.size();
    for (size_t j = 0; j < n; ++j)
      if (static_cast<double>(base[p.sp->hard_off[j]]) + p.sp->hard_px[j].mask >= 1.8) return true;
    return false;
  }

  // Pixels where a paddle at theta may start: its seed element meets no value > 0.3 of the mask
  // with a border of `border` pixels blocked. Fills avail_; returns the count.
  int available(const Sprite& sp, int border) {
    if (sp.seeds_nowhere) return 0;
    int n = 0;
    for (int y = 0; y < R_; ++y)
      for (int x = 0; x < R_; ++x) {
        bool ok = true;
        for (const auto& d : sp.seed_struct) {
          const int yy = y + d[0], xx = x + d[1];
          if (yy < 0 || yy >= R_ || xx < 0 || xx >= R_) continue;
          if (yy < border || yy >= R_ - border || xx < border || xx >= R_ - border || mask_[mi(yy, xx)] > 0.3f) {
            ok = false;
            break;
          }
        }
        avail_[at(y, x)] = ok;
        n += ok;
      }
    return n;
  }
  P2 pick_available(int n) {
    int k = static_cast<int>(rng_.below(static_cast<uint64_t>(n)));
    for (int i = 0;; ++i)
      if (avail_[static_cast<size_t>(i)] && k-- == 0) return {i / R_, i % R_};
  }
  int random_degree(int lo, int hi) { return lo + static_cast<int>(rng_.below(static_cast<uint64_t>(hi - lo))); }
  size_t trig_at(int deg) const { return static_cast<size_t>(deg + 180); }
  // The seed paddle at integer degree `deg` from `tail`; false = its head or pivot leaves the image.
  bool seed_fits(P2 tail, int deg, P2& pivot) const {
    const size_t d = trig_at(deg);
    const P2 head = translate(tail, trig_.sin[d], trig_.cos[d], L_);
    pivot = translate(head, trig_.rsin[d], trig_.rcos[d], L_ + m_);
    return inside(head) && inside(pivot);
  }
  Snake seed_snake(P2 pivot, int deg, const Sprite* sp, P2 tail) const {
    Snake s;
    s.pivot = pivot;
    s.sin = trig_.sin[trig_at(deg)];
    s.cos = trig_.cos[trig_at(deg)];
    s.last = {sp, tail};
    s.deg = deg;
    return s;
  }

  // The first candidate head about P inside the image, whatever its weight.
  const Ring& first_inside(P2 P) const {
    for (const Ring& r : rings_->ring)
      if (inside({P[0] + r.off[0], P[1] + r.off[1]})) return r;
    return rings_->ring[0];  // unreachable: a candidate with weight > 0 is inside
  }

  // snakes.extend_snake. false = dead end or three overlapping draws. The new paddle is appended
  // to `strokes` (painted once the snake is kept).
  bool extend(Snake& s, std::vector<Placed>& strokes, P2* terminal, std::vector<P2>* path) {
    const P2 P = translate(s.pivot, s.sin, s.cos, L_ + 2 * m_);
    const std::vector<Ring>& ring = rings_->ring;
    // Only the candidates with a turn weight above 0 can be drawn: the others add nothing to the
    // cumulative weights, so they are never the first entry above r * total (the last entry is the
    // total and r < 1).
    const std::vector<Turn>& turns = s.ring >= 0 ? rings_->turns[static_cast<size_t>(s.ring)]
                                                 : rings_->seed_turns[trig_at(s.deg)];
    cands_.clear();
    cmf_.clear();
    double total = 0;
    for (const Turn& t : turns) {
      const Ring& r = ring[t.k];
      const P2 c{P[0] + r.off[0], P[1] + r.off[1]};
      if (c[0] < 0 || c[0] >= R_ || c[1] < 0 || c[1] >= R_) continue;
      float dil = 0;  // the mask dilated by a disc of radius m
      const float* mc = &mask_[mi(c[0], c[1])];
      for (const std::ptrdiff_t o : disc_) dil = std::max(dil, mc[o]);
      total += (1.0 - dil) * t.w;
      cands_.push_back(&r);
      cmf_.push_back(total);
    }
    if (total < 1e-4) return false;
    for (int trial = 0; trial < kPaddleTrials; ++trial) {
      const double r = rng_.uniform_double();
      size_t i = 0;
      while (i < cmf_.size() && !(cmf_[i] / total - r > 0)) ++i;
      const Ring& rg = i < cmf_.size() ? *cands_[i] : first_inside(P);  // numpy.argmax of an all-false vector
      const P2 head{P[0] + rg.off[0], P[1] + rg.off[1]};
      const Placed p{rg.sp, head};
      if (overlaps(p)) continue;
      strokes.push_back(p);
      add_mask(s.last);
      s.last = p;
      s.pivot = P;
      s.sin = rg.sin;
      s.cos = rg.cos;
      s.ring = static_cast<int>(&rg - ring.data());
      if (terminal) *terminal = head;
      if (path) path->push_back(head);
      return true;
    }
    return false;
  }

  // Up to kPaddleTrials attempts (the original's paddle trials): an orientation uniform in
  // [-180, 180), its seed sprite, a tail from pick(sprite, tail) (false = give up), until the seed
  // paddle fits there; then `snake` is seeded. false = no attempt fitted or pick gave up.
  template <class Pick>
  bool seed_paddle(Pick pick, P2& tail, Snake& snake) {
    P2 pivot{};
    int deg = 0;
    const Sprite* sp = nullptr;
    bool ok = false;
    for (int trial = 0; trial < kPaddleTrials && !ok; ++trial) {
      deg = random_degree(-180, 180);
      sp = sprites_.degree(res_, m_, deg);
      if (!pick(*sp, tail)) return false;
      ok = seed_fits(tail, deg, pivot);
    }
    if (!ok) return false;
    snake = seed_snake(pivot, deg, sp, tail);
    return true;
  }

  // snakes2.two_snakes; false = restart the image.
  // Most restarts end at the first seed (few orientations have a seed element that reaches every
  // pixel), so the seeds are drawn before the mask is rolled back; nothing is painted before both
  // targets are complete.
  bool targets() {
    std::array<Snake, 2> snakes;
    const int sd = res_.seed_distance;
    P2 tail1{}, tail2{};
    auto first_seed = [&](const Sprite& sp, P2& tail) {
      if (sp.first_seeds.empty()) return false;
      const int i = sp.first_seeds[rng_.below(sp.first_seeds.size())];
      tail = {i / R_, i % R_};
      return true;
    };
    if (!seed_paddle(first_seed, tail1, snakes[0])) return false;
    auto at_seed_distance = [&](const Sprite&, P2& tail) {  // from tail1, in a uniform direction
      const size_t a = trig_at(random_degree(0, 360));
      tail = {static_cast<int>(std::nearbyint(tail1[0] + sd * trig_.sin[a])),  // numpy.round: half to even
              static_cast<int>(std::nearbyint(tail1[1] + sd * trig_.cos[a]))};
      return true;
    };
    if (!seed_paddle(at_seed_distance, tail2, snakes[1])) return false;
    rollback(0);
    strokes_.clear();
    for (int k = 0; k < 2; ++k) strokes_.push_back(snakes[k].last);
    origin_ = {tail1, tail2};
    paths_ = {std::vector<P2>{tail1}, std::vector<P2>{tail2}};
    for (int i = 1; i < cl_; ++i)
      for (int k = 0; k < 2; ++k)
        if (!extend(snakes[k], strokes_, &terminal_[k], &paths_[k])) return false;
    add_mask(snakes[1].last);
    // The original keeps one image per target and takes their maximum; painting both into one
    // image with max is the same.
    const float contrast = static_cast<float>(res_.paddle_contrast * res_.snake_contrast);
    for (const auto& p : strokes_) paint(p, contrast);
    journal_.clear();  // the targets stay
    return true;
  }

  // snakes.make_snake for a distractor; false = dropped (nothing of it stays).
  bool distractor() {
    int64_t raw = 0;
    for (int y = 0; y < R_; ++y)
      raw += std::count_if(&mask_[mi(y, 0)], &mask_[mi(y, R_)], [](float v) { return v <= 0.3f; });
    if (static_cast<double>(raw) / static_cast<double>(image_.size()) < 0.01) return false;  // stop_with_availability
    auto available_tail = [&](const Sprite& sp, P2& tail) {
      const int n = available(sp, 1);
      if (n == 0) return false;
      tail = pick_available(n);
      return true;
    };
    P2 tail{};
    Snake s;
    if (!seed_paddle(available_tail, tail, s)) return false;
    strokes_.clear();
    strokes_.push_back(s.last);
    for (int i = 1; i < dl_; ++i)
      if (!extend(s, strokes_, nullptr, nullptr)) {
        rollback(0);
        return false;
      }
    add_mask(s.last);
    const float contrast = static_cast<float>(res_.snake_contrast);
    for (const auto& p : strokes_) paint(p, contrast);
    journal_.clear();
    return true;
  }

  // snakes2.draw_circle: a disc of marker_radius at 2x, downsampled; value u8 / 255.
  void paint_marker(P2 c) {
    const int Rb = R_ * kAA;
    if (!marker_axis_) marker_axis_ = std::make_unique<Axis>(Rb, R_);
    const double rr = res_.marker_radius * kAA;
    const int w = static_cast<int>(rr) + 1;
    const int y0 = std::max(0, c[0] * kAA - w), y1 = std::min(Rb, c[0] * kAA + w + 1);
    const int x0 = std::max(0, c[1] * kAA - w), x1 = std::min(Rb, c[1] * kAA + w + 1);
    blown_.assign(static_cast<size_t>(Rb) * Rb, 0);
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x) {
        const double dy = y - c[0] * kAA, dx = x - c[1] * kAA;
        if (dy * dy + dx * dx <= rr * rr) blown_[static_cast<size_t>(y) * Rb + x] = 255;
      }
    // Output pixels whose Lanczos support (6 blown pixels) reaches the disc.
    const int r0 = std::max(0, y0 / kAA - 4), r1 = std::min(R_, y1 / kAA + 4);
    const int c0 = std::max(0, x0 / kAA - 4), c1 = std::min(R_, x1 / kAA + 4);
    small_.assign(static_cast<size_t>(R_) * R_, 0);
    resample(blown_.data(), Rb, *marker_axis_, *marker_axis_, R_, r0, r1, c0, c1, y0, y1, small_.data(), tmp_);
    for (int y = r0; y < r1; ++y)
      for (int x = c0; x < c1; ++x)
        image_[at(y, x)] = std::max(image_[at(y, x)], static_cast<float>(small_[at(y, x)]) / 255.0f);
  }

  const Resolution& res_;
  int R_, L_, cl_, dl_, nd_;
  SpriteCache& sprites_;
  ab::RngStream& rng_;
  const DegreeTrig& trig_;
  const RingTable* rings_ = nullptr;  // the candidate heads for this image's margin
  int m_ = 1;
  int pad_ = 0, W_ = 0;                              // mask_ is (R + 2 pad)^2, the image at (pad, pad)
  std::vector<float> image_, mask_;
  std::vector<std::pair<size_t, float>> journal_;  // (pixel, previous value) of mask_ since the last kept snake
  std::vector<Placed> strokes_;                    // the paddles of the snake(s) being drawn
  std::vector<uint8_t> avail_, blown_, small_, tmp_;
  std::vector<std::ptrdiff_t> disc_;  // a disc of radius m as offsets in mask_
  std::vector<const Ring*> cands_;
  std::vector<double> cmf_;
  std::array<P2, 2> origin_{}, terminal_{};
  std::array<std::vector<P2>, 2> paths_;
  std::unique_ptr<Axis> marker_axis_;
};

class Pathfinder : public ab::preset_sizes::Task, public ab::ImageTask {
 public:
  static ab::TaskSpec spec() {
    using ab::null_int_param;
    return ab::task_spec(
        "pathfinder", "LRA Pathfinder / Path-X: are the two markers joined by one dashed curve? (pixels as tokens)",
        "Tay et al. 2021, Long Range Arena; Linsley et al. 2018 and Kim et al. 2020 (snakes generator)",
        ab::preset_sizes::after(
            {
                ab::enum_param(
                    "preset", "small", {"small", "lra"},
                    "defaults of the null split sizes: small = 20,000 / 2,000 / 2,000 images; lra = LRA's 160,000 / "
                    "20,000 / 20,000 (80/10/10 of 200,000)"),
                null_int_param(
                    "resolution",
                    "image side: 32 (LRA Pathfinder), 64, 128 (Path-X) or 256, each with LRA's generator settings; "
                    "seq_len = resolution^2; null = 32 (generated) / the images' size (lra_files)",
                    kMinResolution, kMaxResolution),
                ab::int_param(
                    "contour_length", 14,
                    "paddles per target snake: 6 = LRA's easy split (curv_baseline), 9 = intermediate, 14 = hard "
                    "(LRA's Pathfinder and Path-X)",
                    2, 40),
                null_int_param("distractor_length", "paddles per distractor snake; null = contour_length // 3 (LRA)", 1,
                               40),
                null_int_param(
                    "num_distractor_snakes",
                    "distractor snakes; null = LRA's budget // distractor_length (budget 20 / 22 / 35 / 30 at 32 / "
                    "64 / 128 / 256); at most 62 (the generator tracks snakes in 64-bit masks)",
                    0, 62),
                ab::gray::black_is_padding_param(),
                ab::enum_param("source", "generated", {"generated", "lra_files"},
                               "generated = the generator above; lra_files = read the LRA release's PNGs and metadata"),
                ab::ParamSpec{"path",
                              ab::ParamType::string,
                              Json(""),
                              "with source=lra_files: the contour directory, e.g. lra_release/pathfinder32/"
                              "curv_contour_length_14 (metadata/*.npy text lines and the PNGs they name)",
                              -1e300,
                              1e300,
                              {}},
                ab::int_param(
                    "cache_mb", 1024,
                    "keep generated images in memory up to this many MiB, so later epochs do not redraw them (the "
                    "generator restarts an image thousands of times at 64 and 128, as the original does: ~0.2 ms "
                    "per image at 32, ~5 at 64, ~16 at 128 on one core); 0 = off",
                    0, 1 << 20),
            },
            "images", kSizes, "lra", {"80% of the files", "10% of the files", "10% of the files"}));
  }

  Pathfinder(const Json& p, uint64_t seed) : Task("pathfinder", p, seed, "lra"), tokens_(p) {
    files_ = p.at("source") == "lra_files";
    if (files_) {
      open_files();
    } else {
      if (!p.at("path").get<std::string>().empty())
        throw ab::UsageError("task 'pathfinder': path is only used with source=lra_files; set source=lra_files or drop "
                             "path");
      if (params_.at("resolution").is_null()) params_["resolution"] = 32;
      res_ = &resolution_of(static_cast<int>(params_.at("resolution").get<int64_t>()));
      size_ = res_->size;
      cl_ = static_cast<int>(p.at("contour_length").get<int64_t>());
      if (params_.at("distractor_length").is_null()) params_["distractor_length"] = std::max(1, cl_ / 3);
      dl_ = static_cast<int>(params_.at("distractor_length").get<int64_t>());
      if (params_.at("num_distractor_snakes").is_null()) params_["num_distractor_snakes"] = res_->distractor_budget / dl_;
      nd_ = static_cast<int>(params_.at("num_distractor_snakes").get<int64_t>());
      resolve_sizes(kSizes);
      cache_budget_ = p.at("cache_mb").get<int64_t>() << 20;
      for (int k = 0; k < 3; ++k) cache_[k].resize(static_cast<size_t>(sizes_[k]));
      try {  // fail at construction, not in the middle of training, when the snakes cannot fit
        cached_draw(0, 0);
      } catch (const std::runtime_error& e) {
        throw ab::UsageError(e.what());
      }
    }
  }

  ab::TaskKind kind() const override { return ab::TaskKind::classify; }
  int64_t vocab_size() const override { return tokens_.vocab_size(); }
  int64_t num_classes() const override { return 2; }
  int64_t seq_len() const override { return static_cast<int64_t>(size_) * size_; }
  int64_t image_height() const override { return size_; }
  int64_t image_width() const override { return size_; }
  std::vector<uint8_t> image_pixels(const ab::Example& ex) const override { return tokens_.pixels(ex.input); }

  Json stats() const override {
    if (files_) return {{"source", "lra_files"}, {"images", static_cast<int64_t>(items_.size())}};
    // A probe of the first 16 training images (the generator draws lazily, so nothing else is known yet).
    const int n = static_cast<int>(std::min<int64_t>(16, sizes_[0]));
    int64_t restarts = 0, placed = 0, requested = 0, positives = 0, lit = 0;
    for (int i = 0; i < n; ++i) {
      const std::shared_ptr<const Drawn> dp = cached_draw(0, i);
      const Drawn& d = *dp;
      restarts += d.restarts;
      placed += d.distractors;
      requested += d.distractors_requested;
      positives += d.label;
      for (uint8_t g : d.gray) lit += g > 0;
    }
    return {{"probe_images", n},
            {"restarts_per_image", static_cast<double>(restarts) / n},
            {"distractors_placed", requested ? static_cast<double>(placed) / static_cast<double>(requested) : 1.0},
            {"positive_fraction", static_cast<double>(positives) / n},
            {"lit_pixel_fraction", static_cast<double>(lit) / (static_cast<double>(n) * size_ * size_)},
            {"cached_images", cached_count()}};
  }

  ab::Example example(ab::Split s, int64_t index) const override {
    const int k = checked_split(s, index);
    ab::Example ex;
    if (files_) {
      const auto& it = items_[static_cast<size_t>(flat_index(k, index))];
      // At most the dataset's side: a larger file is refused before its pixels are allocated.
      const ab::GrayImage img = ab::lra::read_pathfinder_image(root_, it.image, size_);
      if (img.width != size_ || img.height != size_)
        throw std::runtime_error(fmt::format("task 'pathfinder': '{}' is {} x {}, the dataset's images are {} x {}",
                                             it.image, img.width, img.height, size_, size_));
      ex.input = tokens_.of(img.pixels);
      ex.target = {it.label};
      ex.text = Json{{"file", it.image}}.dump();
      return ex;
    }
    const std::shared_ptr<const Drawn> dp = cached_draw(k, index);
    const Drawn& d = *dp;
    ex.input = tokens_.of(d.gray);
    ex.target = {d.label};
    ex.text = Json{{"markers", {{d.markers[0][0], d.markers[0][1]}, {d.markers[1][0], d.markers[1][1]}}},
                   {"paths", d.paths},
                   {"margin", d.margin},
                   {"distractors", d.distractors},
                   {"distractors_requested", d.distractors_requested},
                   {"restarts", d.restarts}}
                  .dump();
    return ex;
  }

 private:
  std::shared_ptr<const Drawn> cached_draw(int split, int64_t index) const {
    const size_t i = static_cast<size_t>(index);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cache_[split][i]) return cache_[split][i];
    }
    auto d = std::make_shared<const Drawn>(draw(split, index));
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t bytes = static_cast<int64_t>(d->gray.size() + sizeof(Drawn));
    if (!cache_[split][i] && cache_bytes_ + bytes <= cache_budget_) {
      cache_[split][i] = d;
      cache_bytes_ += bytes;
    }
    return d;
  }
  int64_t cached_count() const {
    std::lock_guard<std::mutex> lock(mu_);
    int64_t n = 0;
    for (const auto& c : cache_)
      for (const auto& p : c) n += p != nullptr;
    return n;
  }

  Drawn draw(int split, int64_t index) const {
    ab::RngStream rng = split_stream(kPathfinderStream, split).child(static_cast<uint64_t>(index));
    Canvas canvas(*res_, cl_, dl_, nd_, *sprites_, rng);
    return canvas.draw();
  }

  void open_files() {
    const std::string path = params_.at("path").get<std::string>();
    if (path.empty())
      throw ab::UsageError("task 'pathfinder': source=lra_files needs path=<contour directory>, e.g. "
                           "path=lra_release/pathfinder32/curv_contour_length_14");
    items_ = ab::lra::read_pathfinder_metadata(path);
    root_ = path;
    // The first image sets the resolution, so it may be at most the largest the task takes; a
    // damaged one is bad input like any other (exit 2), not a failure of the run.
    ab::GrayImage first;
    try {
      first = ab::lra::read_pathfinder_image(root_, items_[0].image, kMaxResolution);
    } catch (const ab::UsageError&) {
      throw;
    } catch (const std::runtime_error& e) {
      throw ab::UsageError(fmt::format("task 'pathfinder': the first image listed in '{}' cannot be used: {}", path,
                                       e.what()));
    }
    if (first.width != first.height)
      throw ab::UsageError(fmt::format("task 'pathfinder': '{}' is {} x {}, not square", items_[0].image, first.width,
                                       first.height));
    if (first.width < kMinResolution)
      throw ab::UsageError(fmt::format("task 'pathfinder': '{}' is {} x {}; this task reads images of {} to {} pixels "
                                       "a side (its resolution parameter)",
                                       items_[0].image, first.width, first.height, kMinResolution, kMaxResolution));
    if (!params_.at("resolution").is_null() && params_.at("resolution").get<int64_t>() != first.width)
      throw ab::UsageError(fmt::format("task 'pathfinder': resolution = {} but the images in '{}' are {} x {}",
                                       params_.at("resolution").get<int64_t>(), path, first.width, first.height));
    size_ = static_cast<int>(first.width);
    params_["resolution"] = size_;
    const int64_t n = static_cast<int64_t>(items_.size());
    const int64_t avail[3] = {n * 8 / 10, n * 9 / 10 - n * 8 / 10, n - n * 9 / 10};
    const auto& keys = ab::preset_sizes::kKeys;
    for (int k = 0; k < 3; ++k) {
      if (avail[k] < 1)
        throw ab::UsageError(fmt::format("task 'pathfinder': '{}' lists {} images, too few for an 80/10/10 split", path, n));
      if (params_.at(keys[k]).is_null()) params_[keys[k]] = avail[k];
      sizes_[k] = params_.at(keys[k]).get<int64_t>();
      if (sizes_[k] > avail[k])
        throw ab::UsageError(fmt::format("task 'pathfinder': {} = {} but the files hold {} for that split (80/10/10 of "
                                         "{}); nearest valid value: {}",
                                         keys[k], sizes_[k], avail[k], n, avail[k]));
    }
    // Split k starts after the available images of the earlier splits (its own share of the list).
    base_ = {0, avail[0], avail[0] + avail[1]};
    std::vector<ab::lra::PathfinderItem> ordered;
    for (int k = 0; k < 3; ++k)
      for (int64_t i = 0; i < sizes_[k]; ++i) ordered.push_back(items_[static_cast<size_t>(base_[k] + i)]);
    items_ = std::move(ordered);
  }

  ab::gray::Tokens tokens_;
  bool files_ = false;
  const Resolution* res_ = nullptr;
  int size_ = 32, cl_ = 14, dl_ = 4, nd_ = 5;
  std::unique_ptr<SpriteCache> sprites_ = std::make_unique<SpriteCache>();  // paddles by orientation
  std::array<int64_t, 3> base_{};
  std::string root_;  // source=lra_files: the contour directory
  std::vector<ab::lra::PathfinderItem> items_;
  // Generated images kept for later epochs (guarded by mu_; example() may be called concurrently).
  mutable std::mutex mu_;
  mutable std::array<std::vector<std::shared_ptr<const Drawn>>, 3> cache_;
  mutable int64_t cache_bytes_ = 0;
  int64_t cache_budget_ = 0;
};

}  // namespace

ATTNBENCH_REGISTER_TASK(Pathfinder);
