// Pathfinder / Path-X (Long Range Arena; images after Linsley et al. 2018 and Kim et al. 2020): two
// round markers on an image of dashed curves; the label says whether one curve joins them.
//
// The generator is the "snakes" algorithm of `drewlinsley/pathfinder` (snakes2.py / snakes.py),
// re-implemented from its description (tasks.md §7.2) with LRA's parameters per resolution (§7.3):
//  * A paddle is a short line of paddle_length L; a snake is a chain of paddles with gaps. Per image
//    one margin m is drawn from the resolution's list.
//  * Two target snakes: tail 1 uniform among pixels at least 2 * seed_distance from the border,
//    orientation an integer degree in [-180, 180); tail 2 = round(tail 1 + seed_distance *
//    (sin a, cos a)) for an integer degree a in [0, 360) (the two origin tips are seed_distance
//    apart); head = tail + L dir, pivot = head - (L + m) dir; 3 trials, else restart the image.
//  * Both snakes grow alternately by contour_length - 1 paddles: next pivot P' = pivot + (L + 2m)
//    dir(previous); candidate heads on the circle of radius L + m around P', one pixel of arc apart;
//    weight = (1 - blocked) * max(cos(min(continuity * |turn|, pi/2)), 0)^2; the paddle runs from the
//    sampled head back towards P' and is kept if it does not overlap what is drawn (3 trials, else
//    restart the image). A snake's newest paddle never blocks its own next step.
//  * Distractor snakes: num_distractor_snakes (LRA: budget // distractor_length, distractor_length
//    = contour_length // 3) of distractor_length paddles, seeded uniformly among free positions, 5
//    attempts each; a failed one is dropped (LRA allows incomplete sets).
//  * Label uniform; a marker (disc of marker_radius) on the origin tip of a random target snake and
//    on the terminal tip of the same snake (label 1) or of the other one (label 0). Label and marked
//    snake are drawn after everything else, so no rejection above depends on the label.
//  * Intensities as the released PNGs imply: targets paddle_contrast * snake_contrast, distractors
//    snake_contrast, markers 1.0; the image is rescaled so its maximum is 255 (old scipy imsave).
//
// Deliberate differences, all recorded here:
//  - Binary rasterisation (pixels within max(thickness / 2, 0.5) of a paddle's segment), no
//    anti-aliasing; coordinates stay in floating point (the original rounds pivots up and truncates
//    candidate heads to pixels, which drifts snakes by about half a pixel per paddle).
//  - Overlap is tested on drawn pixels: no pixel of a new paddle within 2m of any snake's pixels
//    (the snake's own newest paddle excepted) -- the original's test of masks dilated by m.
//  - Labels are exact by construction. Snakes whose pixels come within the link radius
//    r = 2 * max(margins) + 1.5 of each other form a cluster; a paddle (or marker disc, reserved at all
//    four target tips) that would put the two target snakes into one cluster is refused like an
//    overlap, and consecutive paddles of a snake must lie within r of each other. So the markers are
//    joined by one path exactly when their pixels are connected through drawn pixels at most r apart,
//    which tests/test_tasks.cpp checks by a search on the image. The two targets therefore stay a
//    little further apart than in LRA (more than r instead of 2m); distractors may approach either.
//  - The first paddle of target snake 2 is checked like any other (the original does not check it).
//  - Free seed positions are found by rejection sampling (uniform over the free positions, up to 200
//    draws) instead of dilating the mask with the oriented paddle; the 1% availability stop is not
//    modelled; single-paddle distractors are off (the wrapper's setting).
//  - One Philox stream per image, (seed, data, kPathfinderStream, split).child(index): any image is
//    generated on demand; generated images are kept in memory up to cache_mb.
//  - Tokens: gray level + 1, so 0 stays padding (vocabulary 257); black_is_padding=true gives LRA's
//    convention instead (token = gray level, black pixels count as padding; vocabulary 256).
// Like the original, this is a heavy rejection sampler at 64 and 128 (a few thousand restarts per
// image; ~35 and ~100 ms per image), fast at 32 and 256 (~2-4 ms).
// source=lra_files reads the LRA release instead (see lra_loaders.hpp): metadata order, split
// 80/10/10 as LRA does; empty images are not filtered.
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "io/lra_loaders.hpp"
#include "io/png.hpp"
#include "attnbench/rng.hpp"
#include "attnbench/task_helpers.hpp"

namespace {

using ab::Json;

constexpr uint64_t kPathfinderStream = 0x5061746846696Eull;  // "PathFin"
constexpr int kPaddleTrials = 3;        // max_paddle_retrial (2) + 1
constexpr int kDistractorAttempts = 5;  // max_distractor_contour_retrial (4) + 1
constexpr int kSeedDraws = 200;         // rejection-sampling draws for a free seed position
constexpr int kMaxRestarts = 100000;    // per image, then the settings are declared impossible
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

struct Pt {
  double y, x;
};

// One drawn image with what a checker or a user may want to know about it.
struct Drawn {
  std::vector<uint8_t> gray;  // size * size
  int label = 0;
  std::array<std::array<int, 2>, 2> markers{};  // (y, x) of the two marker centres
  int margin = 0, distractors = 0, distractors_requested = 0, restarts = 0;
};

// The drawing state of one image. Grids are padded by `B_` cells on every side so that
// neighbourhood scans need no bounds checks; pixel (y, x) lives at cell (y + B_) * W_ + x + B_.
class Canvas {
 public:
  Canvas(const Resolution& res, int contour_length, int distractor_length, int num_distractors, double link_radius,
         ab::RngStream& rng)
      : res_(res), R_(res.size), L_(res.paddle_length), cl_(contour_length), dl_(distractor_length),
        nd_(num_distractors), rng_(rng) {
    hw_ = std::max(0.5, res.thickness / 2);
    link2_ = link_radius * link_radius;
    const int win = static_cast<int>(std::floor(link_radius));
    B_ = std::max(win, static_cast<int>(std::ceil(res.marker_radius))) + 1;
    W_ = R_ + 2 * B_;
    owner_.assign(static_cast<size_t>(W_ * W_), -1);
    paddle_.assign(owner_.size(), -1);
    value_.assign(owner_.size(), 0.f);
    zone_.assign(owner_.size(), 0);
    for (int dy = -win; dy <= win; ++dy)
      for (int dx = -win; dx <= win; ++dx)
        if (dy * dy + dx * dx <= link2_) near_.push_back(dy * W_ + dx);
    cluster_.resize(static_cast<size_t>(2 + nd_));
  }

  Drawn draw() {
    Drawn out;
    // One margin per image, drawn before the target loop (snakes2.from_wrapper).
    m_ = res_.margins.size() == 1 ? res_.margins[0]
                                  : res_.margins[rng_.below(static_cast<uint64_t>(res_.margins.size()))];
    lo_ = res_.padding + m_;
    hi_ = R_ - 1 - res_.padding - m_;
    self_.clear();
    const int sw = 2 * m_;
    for (int dy = -sw; dy <= sw; ++dy)
      for (int dx = -sw; dx <= sw; ++dx)
        if (dy * dy + dx * dx <= sw * sw) self_.push_back(dy * W_ + dx);
    rho_ = L_ + m_;
    const double step = 360.0 / (2 * rho_ * kPi);  // one pixel of arc
    circle_.clear();
    for (int k = 0; k * step < 360.0; ++k) {
      const double a = k * step * kPi / 180.0;
      circle_.push_back({std::sin(a), std::cos(a), std::atan2(std::sin(a), std::cos(a))});
    }
    turn_weight_.assign(circle_.size(), 0.0);
    for (size_t k = 0; k < circle_.size(); ++k) {
      const double deg = std::min(k * step, 360.0 - k * step);
      const double delta = deg * kPi / 180.0 * res_.continuity;
      turn_weight_[k] = delta >= kPi / 2 ? 0.0 : std::cos(delta) * std::cos(delta);
    }
    for (int restart = 0;; ++restart) {
      if (restart >= kMaxRestarts)
        throw std::runtime_error(fmt::format(
            "task 'pathfinder': no image after {} attempts at resolution {} with contour_length {}; the snakes do not "
            "fit, lower contour_length",
            kMaxRestarts, R_, cl_));
      clear();
      if (!targets()) continue;
      out.restarts = restart;
      break;
    }
    out.margin = m_;
    out.distractors_requested = nd_;
    for (int d = 0; d < nd_; ++d) {
      Snake s(2 + d, static_cast<float>(res_.snake_contrast));
      for (int attempt = 0; attempt < kDistractorAttempts; ++attempt) {
        const std::vector<int> saved = cluster_;
        if (grow_distractor(s)) {
          ++out.distractors;
          break;
        }
        undo(s);
        cluster_ = saved;
      }
    }
    // Markers: label and the marked snake are drawn last, so nothing above depends on the label.
    out.label = static_cast<int>(rng_.below(2));
    const int o = static_cast<int>(rng_.below(2));
    const int t = out.label ? o : 1 - o;
    out.markers = {pixel_of(targets_[o].origin), pixel_of(targets_[t].terminal)};
    for (const auto& c : out.markers) paint_disc(c[0], c[1], 1.0f);
    float vmax = 0;
    for (float v : value_) vmax = std::max(vmax, v);
    out.gray.resize(static_cast<size_t>(R_ * R_));
    for (int y = 0; y < R_; ++y)
      for (int x = 0; x < R_; ++x)  // scipy's bytescale: v * 255 / max + 0.4999, truncated
        out.gray[y * R_ + x] =
            static_cast<uint8_t>(std::min(255.0, std::floor(value_[cell(y, x)] * 255.0 / vmax + 0.4999)));
    return out;
  }

 private:
  struct Snake {
    Snake() = default;
    Snake(int id_, float intensity_) : id(id_), intensity(intensity_) {}
    int id = 0;
    float intensity = 1;
    std::vector<int> pixels;   // every cell drawn for this snake (for undo)
    std::vector<int> prev_px;  // the newest paddle's cells
    int prev_paddle = -1;
    Pt pivot{}, origin{}, terminal{};
    double theta = 0;
    int theta_index = -1;  // index into circle_ when theta is one of its directions
  };
  struct Dir {
    double s, c, angle;
  };

  int cell(int y, int x) const { return (y + B_) * W_ + x + B_; }
  int cell_y(int c) const { return c / W_ - B_; }
  int cell_x(int c) const { return c % W_ - B_; }
  static std::array<int, 2> pixel_of(Pt p) {
    return {static_cast<int>(std::lround(p.y)), static_cast<int>(std::lround(p.x))};
  }
  bool in_image(Pt p) const { return p.y >= 0 && p.y < R_ && p.x >= 0 && p.x < R_; }
  double random_degree(int lo, int hi) {  // integer degree in [lo, hi), in radians
    return static_cast<double>(lo + static_cast<int>(rng_.below(static_cast<uint64_t>(hi - lo)))) * kPi / 180.0;
  }

  void touch(int c) {
    if (owner_[c] < 0 && paddle_[c] < 0 && value_[c] == 0.f) touched_.push_back(c);
  }
  void clear() {  // forget everything drawn (cheaper than refilling the grids)
    for (int c : zone_touched_) zone_[c] = 0;
    zone_touched_.clear();
    for (int c : touched_) {
      owner_[c] = -1;
      paddle_[c] = -1;
      value_[c] = 0.f;
    }
    touched_.clear();
    next_paddle_ = 0;
    for (size_t i = 0; i < cluster_.size(); ++i) cluster_[i] = static_cast<int>(i);
  }

  // Cells whose pixel centres lie within hw_ of the segment a-b (clipped to the image), into px_.
  const std::vector<int>& raster(Pt a, Pt b) {
    px_.clear();
    const int y0 = std::max(0, static_cast<int>(std::floor(std::min(a.y, b.y) - hw_)));
    const int y1 = std::min(R_ - 1, static_cast<int>(std::ceil(std::max(a.y, b.y) + hw_)));
    const int x0 = std::max(0, static_cast<int>(std::floor(std::min(a.x, b.x) - hw_)));
    const int x1 = std::min(R_ - 1, static_cast<int>(std::ceil(std::max(a.x, b.x) + hw_)));
    const double dy = b.y - a.y, dx = b.x - a.x, len2 = dy * dy + dx * dx, lim = hw_ * hw_ + 1e-9;
    for (int y = y0; y <= y1; ++y)
      for (int x = x0; x <= x1; ++x) {
        const double t = len2 > 0 ? std::clamp(((y - a.y) * dy + (x - a.x) * dx) / len2, 0.0, 1.0) : 0.0;
        const double ey = y - (a.y + t * dy), ex = x - (a.x + t * dx);
        if (ey * ey + ex * ex <= lim) px_.push_back(cell(y, x));
      }
    return px_;
  }

  bool in_region(int c) const {
    const int y = cell_y(c), x = cell_x(c);
    return y >= lo_ && y <= hi_ && x >= lo_ && x <= hi_;
  }

  // The original's overlap test on drawn cells: c lies in the allowed region and no paddle of any
  // snake (the snake's own newest paddle excepted) nor another snake's reserved marker disc lies
  // within 2m of it.
  bool clear_of(int c, const Snake& s) const {
    if (!in_region(c)) return false;
    for (int off : self_) {
      const int p = c + off, o = owner_[p];
      if (o < 0) continue;
      if (o != s.id || (paddle_[p] >= 0 && paddle_[p] != s.prev_paddle)) return false;
    }
    return true;
  }

  // zone_[c] has bit t set when snake t owns a cell (drawn or reserved) within the link radius of c.
  void mark_zone(int c, int s) {
    const uint64_t bit = uint64_t{1} << s;
    for (int off : near_) {
      uint64_t& z = zone_[c + off];
      if (z == 0) zone_touched_.push_back(c + off);
      z |= bit;
    }
  }
  void unmark_zone(int c, int s) {  // only for a snake being removed (no two snakes share a cell)
    const uint64_t keep = ~(uint64_t{1} << s);
    for (int off : near_) zone_[c + off] &= keep;
  }

  // Adds to links_ every other snake with a cell within the link radius of c.
  void collect_links(int c, int s) {
    uint64_t z = zone_[c] & ~(uint64_t{1} << s);
    while (z) {
      const int t = std::countr_zero(z);
      z &= z - 1;
      if (std::find(links_.begin(), links_.end(), t) == links_.end()) links_.push_back(t);
    }
  }

  // Whether linking snake s to links_ would join the clusters of the two target snakes.
  bool joins_targets(int s) const {
    const int c0 = cluster_[0], c1 = cluster_[1];
    bool has0 = cluster_[s] == c0, has1 = cluster_[s] == c1;
    for (int t : links_) {
      has0 |= cluster_[t] == c0;
      has1 |= cluster_[t] == c1;
    }
    return has0 && has1;
  }

  // The target cluster snake s must stay more than the link radius away from (-1 = none yet).
  int partner(int s) const {
    if (cluster_[s] == cluster_[0]) return cluster_[1];
    if (cluster_[s] == cluster_[1]) return cluster_[0];
    return -1;
  }
  bool near_cluster(int c, int cl) const {
    if (cl < 0) return false;
    for (uint64_t z = zone_[c]; z; z &= z - 1)
      if (cluster_[std::countr_zero(z)] == cl) return true;
    return false;
  }

  // A paddle fits when every cell is clear, it joins no two target clusters, and (after the first)
  // it lies within the link radius of the snake's previous paddle. Leaves its links in links_.
  bool fits(const std::vector<int>& px, const Snake& s) {
    links_.clear();
    if (px.empty()) return false;
    for (int c : px)
      if (!clear_of(c, s)) return false;
    for (int c : px) collect_links(c, s.id);
    if (joins_targets(s.id)) return false;
    if (s.prev_px.empty()) return true;
    for (int c : px)  // the chain stays linked
      for (int p : s.prev_px) {
        const int dy = cell_y(c) - cell_y(p), dx = cell_x(c) - cell_x(p);
        if (dy * dy + dx * dx <= link2_) return true;
      }
    return false;
  }

  void merge_links(int s) {
    for (int t : links_) {
      const int from = cluster_[t], to = cluster_[s];
      if (from == to) continue;
      for (auto& c : cluster_)
        if (c == from) c = to;
    }
  }

  void commit(const std::vector<int>& px, Snake& s) {
    merge_links(s.id);
    for (int c : px) {
      touch(c);
      if (owner_[c] != s.id) mark_zone(c, s.id);
      owner_[c] = static_cast<int16_t>(s.id);
      paddle_[c] = next_paddle_;
      value_[c] = std::max(value_[c], s.intensity);
      s.pixels.push_back(c);
    }
    s.prev_px = px;
    s.prev_paddle = next_paddle_++;
  }

  void undo(Snake& s) {
    for (int c : s.pixels) unmark_zone(c, s.id);
    for (int c : s.pixels) {
      owner_[c] = -1;
      paddle_[c] = -1;
      value_[c] = 0.f;
    }
    s = Snake(s.id, s.intensity);
  }

  void disc_cells(int cy, int cx, std::vector<int>& out) const {
    out.clear();
    const double r = res_.marker_radius;
    const int w = static_cast<int>(std::ceil(r));
    for (int dy = -w; dy <= w; ++dy)
      for (int dx = -w; dx <= w; ++dx) {
        const int y = cy + dy, x = cx + dx;
        if (y < 0 || y >= R_ || x < 0 || x >= R_) continue;
        if (dy * dy + dx * dx <= r * r + 1e-9) out.push_back(cell(y, x));
      }
  }

  // Reserves the marker disc at p for snake s: it may not bring the two target clusters within
  // the link radius of each other.
  bool reserve_disc(Pt p, int s) {
    const auto c = pixel_of(p);
    disc_cells(c[0], c[1], disc_);
    links_.clear();
    for (int q : disc_) collect_links(q, s);
    if (joins_targets(s)) return false;
    merge_links(s);
    for (int q : disc_)
      if (owner_[q] < 0) {
        touch(q);
        owner_[q] = static_cast<int16_t>(s);
        mark_zone(q, s);
      }
    return true;
  }

  void paint_disc(int cy, int cx, float v) {
    disc_cells(cy, cx, disc_);
    for (int q : disc_) value_[q] = std::max(value_[q], v);
  }

  // The first paddle of a snake at tail t with orientation theta: checks and draws it.
  bool place_first(Snake& s, Pt t, double theta) {
    const Pt d{std::sin(theta), std::cos(theta)};
    const Pt head{t.y + L_ * d.y, t.x + L_ * d.x};
    const Pt pivot{head.y - (L_ + m_) * d.y, head.x - (L_ + m_) * d.x};
    if (!in_image(head) || !in_image(pivot)) return false;
    if (!fits(raster(t, head), s)) return false;
    commit(px_, s);
    s.pivot = pivot;
    s.theta = theta;
    s.origin = t;
    s.terminal = head;
    return true;
  }

  // snakes.extend_snake: one more paddle around the next pivot.
  bool extend(Snake& s) {
    const Pt P{s.pivot.y + (L_ + 2 * m_) * std::sin(s.theta), s.pivot.x + (L_ + 2 * m_) * std::cos(s.theta)};
    cands_.clear();
    double total = 0;
    const int n = static_cast<int>(circle_.size());
    for (int k = 0; k < n; ++k) {
      const Dir& d = circle_[static_cast<size_t>(k)];
      double w;  // cos(min(c * |turn|, pi/2))^2, tabulated when theta is a circle direction
      if (s.theta_index >= 0) {
        w = turn_weight_[static_cast<size_t>(std::abs(k - s.theta_index))];
      } else {
        double delta = std::fabs(d.angle - s.theta);
        delta = std::min(delta, 2 * kPi - delta) * res_.continuity;
        w = delta >= kPi / 2 ? 0.0 : std::cos(delta) * std::cos(delta);
      }
      if (w <= 0) continue;
      const double fy = P.y + rho_ * d.s, fx = P.x + rho_ * d.c;
      if (fy < 0 || fy >= R_ || fx < 0 || fx >= R_) continue;
      const int c = cell(static_cast<int>(std::lround(fy)), static_cast<int>(std::lround(fx)));
      if (!clear_of(c, s) || near_cluster(c, partner(s.id))) continue;  // blocked
      total += w;
      cands_.push_back({static_cast<int>(k), total});
    }
    if (total < 1e-4) return false;  // dead end
    for (int trial = 0; trial < kPaddleTrials; ++trial) {
      const double r = rng_.uniform_double() * total;
      size_t i = 0;
      while (i + 1 < cands_.size() && cands_[i].second <= r) ++i;
      const Dir& d = circle_[static_cast<size_t>(cands_[i].first)];
      const Pt head{P.y + rho_ * d.s, P.x + rho_ * d.c};
      if (!fits(raster(head, {head.y - L_ * d.s, head.x - L_ * d.c}), s)) continue;
      commit(px_, s);
      s.pivot = P;
      s.theta = d.angle;
      s.theta_index = cands_[i].first;
      s.terminal = head;
      return true;
    }
    return false;
  }

  // snakes2.initialize_two_seeds + two_snakes + the marker reservations; false = restart the image.
  bool targets() {
    const int sd = res_.seed_distance;
    const int lo = 2 * sd, hi = R_ - 2 * sd;  // tail 1 avoids a border of 2 * seed_distance
    targets_[0] = Snake(0, static_cast<float>(res_.paddle_contrast * res_.snake_contrast));
    targets_[1] = Snake(1, targets_[0].intensity);
    bool ok = false;
    Pt t1{};
    for (int trial = 0; trial < kPaddleTrials && !ok; ++trial) {
      const double theta = random_degree(-180, 180);
      t1 = {static_cast<double>(lo + static_cast<int>(rng_.below(static_cast<uint64_t>(hi - lo)))),
            static_cast<double>(lo + static_cast<int>(rng_.below(static_cast<uint64_t>(hi - lo))))};
      ok = place_first(targets_[0], t1, theta);
    }
    if (!ok) return false;
    ok = false;
    for (int trial = 0; trial < kPaddleTrials && !ok; ++trial) {
      const double theta = random_degree(-180, 180);
      const double a = random_degree(0, 360);
      const Pt t2{std::nearbyint(t1.y + sd * std::sin(a)), std::nearbyint(t1.x + sd * std::cos(a))};  // np.round
      ok = in_image(t2) && place_first(targets_[1], t2, theta);
    }
    if (!ok) return false;
    if (!reserve_disc(targets_[0].origin, 0) || !reserve_disc(targets_[1].origin, 1)) return false;
    for (int k = 1; k < cl_; ++k)
      for (auto& s : targets_)
        if (!extend(s)) return false;
    return reserve_disc(targets_[0].terminal, 0) && reserve_disc(targets_[1].terminal, 1);
  }

  // snakes.make_snake for a distractor; false = drop it (the caller undoes its cells).
  bool grow_distractor(Snake& s) {
    bool ok = false;
    for (int trial = 0; trial < kPaddleTrials && !ok; ++trial) {
      const double theta = random_degree(-180, 180);
      const Pt d{std::sin(theta), std::cos(theta)};
      // A free tail: uniform among the positions where this paddle fits (rejection sampling).
      for (int draw = 0; draw < kSeedDraws; ++draw) {
        const Pt t{static_cast<double>(lo_ + static_cast<int>(rng_.below(static_cast<uint64_t>(hi_ - lo_ + 1)))),
                   static_cast<double>(lo_ + static_cast<int>(rng_.below(static_cast<uint64_t>(hi_ - lo_ + 1))))};
        if (!clear_of(cell(static_cast<int>(t.y), static_cast<int>(t.x)), s)) continue;  // quick test of the tail
        if (!fits(raster(t, {t.y + L_ * d.y, t.x + L_ * d.x}), s)) continue;
        ok = place_first(s, t, theta);
        break;
      }
    }
    if (!ok) return false;
    for (int k = 1; k < dl_; ++k)
      if (!extend(s)) return false;
    return true;
  }

  const Resolution& res_;
  int R_, L_, cl_, dl_, nd_;
  ab::RngStream& rng_;
  double hw_ = 0.5, link2_ = 0, rho_ = 0;
  int B_ = 0, W_ = 0, m_ = 1, lo_ = 0, hi_ = 0;
  std::vector<int16_t> owner_;   // snake id of a drawn or reserved cell, -1 = free
  std::vector<int32_t> paddle_;  // paddle id of a drawn cell, -1 = none
  std::vector<float> value_;     // intensity before rescaling
  std::vector<int> touched_;     // cells written since the last clear()
  std::vector<int> near_, self_;  // cell offsets within the link radius / within 2m
  std::vector<Dir> circle_;       // candidate directions, one pixel of arc apart
  std::vector<double> turn_weight_;  // continuity weight by |index difference| on circle_
  std::vector<uint64_t> zone_;       // per cell: snakes with a cell within the link radius
  std::vector<int> zone_touched_;
  std::vector<std::pair<int, double>> cands_;  // (direction, cumulative weight)
  std::vector<int> px_, disc_;
  std::vector<int> links_;    // snakes within the link radius of the paddle being placed
  std::vector<int> cluster_;  // cluster label per snake (snakes linked within the link radius)
  int32_t next_paddle_ = 0;
  std::array<Snake, 2> targets_;
};

class Pathfinder : public ab::SplitTask, public ab::ImageTask {
 public:
  static ab::TaskSpec spec() {
    ab::TaskSpec s;
    s.name = "pathfinder";
    s.summary = "LRA Pathfinder / Path-X: are the two markers joined by one dashed curve? (pixels as tokens)";
    s.reference = "Tay et al. 2021, Long Range Arena; Linsley et al. 2018 and Kim et al. 2020 (snakes generator)";
    using ab::null_int_param;
    s.params = {
        ab::enum_param("preset", "small", {"small", "lra"},
                       "defaults of the null split sizes: small = 20,000 / 2,000 / 2,000 images; lra = LRA's 160,000 / "
                       "20,000 / 20,000 (80/10/10 of 200,000)"),
        null_int_param("resolution",
                       "image side: 32 (LRA Pathfinder), 64, 128 (Path-X) or 256, each with LRA's generator settings; "
                       "seq_len = resolution^2; null = 32 (generated) / the images' size (lra_files)",
                       kMinResolution, kMaxResolution),
        ab::int_param("contour_length", 14,
                      "paddles per target snake: 6 = LRA's easy split (curv_baseline), 9 = intermediate, 14 = hard "
                      "(LRA's Pathfinder and Path-X)",
                      2, 40),
        null_int_param("distractor_length", "paddles per distractor snake; null = contour_length // 3 (LRA)", 1, 40),
        null_int_param("num_distractor_snakes",
                       "distractor snakes; null = LRA's budget // distractor_length (budget 20 / 22 / 35 / 30 at 32 / "
                       "64 / 128 / 256); at most 62 (the generator tracks snakes in 64-bit masks)",
                       0, 62),
        ab::bool_param("black_is_padding", false,
                       "LRA's token convention: token = gray level, so black pixels are padding (vocabulary 256); "
                       "false = gray level + 1, nothing is padding (vocabulary 257)"),
        ab::enum_param("source", "generated", {"generated", "lra_files"},
                       "generated = the generator above; lra_files = read the LRA release's PNGs and metadata"),
        ab::ParamSpec{"path", ab::ParamType::string, Json(""),
                      "with source=lra_files: the contour directory, e.g. lra_release/pathfinder32/"
                      "curv_contour_length_14 (metadata/*.npy text lines and the PNGs they name)",
                      -1e300, 1e300, {}},
        ab::int_param("cache_mb", 1024,
                      "keep generated images in memory up to this many MiB, so later epochs do not redraw them (the "
                      "generator is a rejection sampler: ~2 ms per image at 32, ~35 at 64, ~100 at 128); 0 = off",
                      0, 1 << 20),
        null_int_param("train_size", "training images; null = 20,000 (small) / 160,000 (lra) / 80% of the files",
                       1, 1e10),
        null_int_param("valid_size", "validation images; null = 2,000 (small) / 20,000 (lra) / 10% of the files",
                       1, 1e10),
        null_int_param("test_size", "test images; null = 2,000 (small) / 20,000 (lra) / 10% of the files", 1, 1e10),
    };
    return s;
  }

  Pathfinder(const Json& p, uint64_t seed) : SplitTask("pathfinder", p, seed, "lra") {
    offset_ = p.at("black_is_padding").get<bool>() ? 0 : 1;
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
      sizes_ = {preset_default("train_size", 20000, 160000).get<int64_t>(),
                preset_default("valid_size", 2000, 20000).get<int64_t>(),
                preset_default("test_size", 2000, 20000).get<int64_t>()};
      link_radius_ = 2.0 * *std::max_element(res_->margins.begin(), res_->margins.end()) + 1.5;
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
  int64_t vocab_size() const override { return 256 + offset_; }
  int64_t num_classes() const override { return 2; }
  int64_t seq_len() const override { return static_cast<int64_t>(size_) * size_; }
  int64_t image_height() const override { return size_; }
  int64_t image_width() const override { return size_; }
  std::vector<uint8_t> image_pixels(const ab::Example& ex) const override {
    std::vector<uint8_t> px(ex.input.size());
    for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>(std::clamp(ex.input[i] - offset_, 0, 255));
    return px;
  }

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
            {"link_radius", link_radius_},
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
      ex.input.resize(img.pixels.size());
      for (size_t i = 0; i < img.pixels.size(); ++i) ex.input[i] = img.pixels[i] + offset_;
      ex.target = {it.label};
      ex.text = Json{{"file", it.image}}.dump();
      return ex;
    }
    const std::shared_ptr<const Drawn> dp = cached_draw(k, index);
    const Drawn& d = *dp;
    ex.input.resize(d.gray.size());
    for (size_t i = 0; i < d.gray.size(); ++i) ex.input[i] = d.gray[i] + offset_;
    ex.target = {d.label};
    ex.text = Json{{"markers", {{d.markers[0][0], d.markers[0][1]}, {d.markers[1][0], d.markers[1][1]}}},
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
    Canvas canvas(*res_, cl_, dl_, nd_, link_radius_, rng);
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
    const char* keys[3] = {"train_size", "valid_size", "test_size"};
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

  int offset_ = 1;
  bool files_ = false;
  const Resolution* res_ = nullptr;
  int size_ = 32, cl_ = 14, dl_ = 4, nd_ = 5;
  double link_radius_ = 4;
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
