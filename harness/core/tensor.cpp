#include "attnbench/tensor.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <stdexcept>
#include <unordered_map>

#include <fmt/format.h>

#include "core/alloc_trace.hpp"

namespace ab {

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// ---- tracking, caching allocator ----
namespace {

struct Allocator {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;  // by rounded size
  int64_t live = 0, peak = 0, cached = 0, allocations = 0;
  std::vector<int64_t>* recorder = nullptr;  // set_allocation_recorder

  static size_t round(size_t bytes) {
    // Small blocks: 64-byte granules; large ones: 4 KiB pages, so that reuse is likely.
    return bytes <= 65536 ? (bytes + 63) & ~size_t(63) : (bytes + 4095) & ~size_t(4095);
  }
  void* allocate(size_t bytes) {
    const size_t size = round(std::max<size_t>(bytes, 64));
    {
      std::lock_guard<std::mutex> lock(mu);
      live += static_cast<int64_t>(size);
      peak = std::max(peak, live);
      ++allocations;
      if (recorder) recorder->push_back(live);
      auto it = free_blocks.find(size);
      if (it != free_blocks.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached -= static_cast<int64_t>(size);
        return p;
      }
    }
    void* p = std::aligned_alloc(64, size);
    if (!p) {
      std::lock_guard<std::mutex> lock(mu);
      live -= static_cast<int64_t>(size);
      throw std::bad_alloc();
    }
    return p;
  }
  void release(void* p, size_t bytes) {
    const size_t size = round(std::max<size_t>(bytes, 64));
    std::lock_guard<std::mutex> lock(mu);
    live -= static_cast<int64_t>(size);
    free_blocks[size].push_back(p);
    cached += static_cast<int64_t>(size);
  }
  void trim() {
    std::lock_guard<std::mutex> lock(mu);
    for (auto& [size, v] : free_blocks)
      for (void* p : v) std::free(p);
    free_blocks.clear();
    cached = 0;
  }
};

Allocator& allocator() {
  static Allocator* a = new Allocator();  // never destroyed: tensors may outlive static teardown
  return *a;
}

}  // namespace

MemoryStats memory_stats() {
  auto& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  return {a.live, a.peak, a.cached, a.allocations};
}

void release_cached_memory() { allocator().trim(); }

void set_allocation_recorder(std::vector<int64_t>* out) {
  auto& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  a.recorder = out;
}

PeakScope::PeakScope() {
  auto& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  base_live_ = a.live;
  outer_peak_ = a.peak;
  a.peak = a.live;
}

PeakScope::~PeakScope() {
  auto& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  a.peak = std::max(a.peak, outer_peak_);
}

int64_t PeakScope::peak_bytes() const {
  auto& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  return a.peak - base_live_;
}

struct Storage {
  float* ptr = nullptr;
  size_t bytes = 0;
  explicit Storage(size_t n) : ptr(static_cast<float*>(allocator().allocate(n))), bytes(n) {}
  ~Storage() { allocator().release(ptr, bytes); }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

// ---- Tensor ----
Tensor Tensor::empty(Shape shape) {
  for (auto d : shape)
    if (d < 0) throw std::invalid_argument("negative dimension in shape " + shape_str(shape));
  Tensor t;
  t.shape_ = std::move(shape);
  t.storage_ = std::make_shared<Storage>(static_cast<size_t>(t.numel()) * sizeof(float));
  return t;
}

Tensor Tensor::zeros(Shape shape) {
  Tensor t = empty(std::move(shape));
  std::memset(t.data(), 0, static_cast<size_t>(t.bytes()));
  return t;
}

Tensor Tensor::full(Shape shape, float value) {
  Tensor t = empty(std::move(shape));
  t.fill(value);
  return t;
}

Tensor Tensor::from(Shape shape, const std::vector<float>& values) {
  Tensor t = empty(std::move(shape));
  if (static_cast<int64_t>(values.size()) != t.numel())
    throw std::invalid_argument(fmt::format("Tensor::from: {} values for shape {}", values.size(), shape_str(t.shape_)));
  std::memcpy(t.data(), values.data(), values.size() * sizeof(float));
  return t;
}

float* Tensor::data() { return storage_ ? storage_->ptr : nullptr; }
const float* Tensor::data() const { return storage_ ? storage_->ptr : nullptr; }

Tensor Tensor::reshape(Shape shape) const {
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      if (infer >= 0) throw std::invalid_argument("reshape: more than one -1 in " + shape_str(shape));
      infer = static_cast<int>(i);
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0 && known > 0) shape[static_cast<size_t>(infer)] = numel() / known;
  if (ab::numel(shape) != numel())
    throw std::invalid_argument(fmt::format("reshape: {} -> {} changes the element count", shape_str(shape_),
                                            shape_str(shape)));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_);
  std::memcpy(t.data(), data(), static_cast<size_t>(bytes()));
  return t;
}

void Tensor::fill(float value) { std::fill(data(), data() + numel(), value); }

void Tensor::copy_from(const Tensor& other) {
  if (other.numel() != numel())
    throw std::invalid_argument(fmt::format("copy_from: {} vs {}", shape_str(other.shape_), shape_str(shape_)));
  std::memcpy(data(), other.data(), static_cast<size_t>(bytes()));
}

std::vector<float> Tensor::to_vector() const { return std::vector<float>(data(), data() + numel()); }

}  // namespace ab
