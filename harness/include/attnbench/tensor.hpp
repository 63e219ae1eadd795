#pragma once
// Dense fp32 tensors, row-major and always contiguous, with storage from a tracking allocator
// that knows the exact live and peak bytes of every tensor in the process.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ab {

using Shape = std::vector<int64_t>;

int64_t numel(const Shape& s);
std::string shape_str(const Shape& s);

// ---- tracking allocator ---------------------------------------------------------------------
// Live and peak count the bytes of tensors that exist (64-byte rounded). Freed blocks are kept in
// a cache for reuse (first-touch page faults are expensive); cached bytes are reported apart.
struct MemoryStats {
  int64_t live_bytes = 0;
  int64_t peak_bytes = 0;
  int64_t cached_bytes = 0;
  int64_t allocations = 0;
};
MemoryStats memory_stats();
void release_cached_memory();

// Reads the peak of a region: peak_bytes() is the highest live total seen since construction,
// minus the live total at construction. Scopes nest.
class PeakScope {
 public:
  PeakScope();
  ~PeakScope();
  PeakScope(const PeakScope&) = delete;
  PeakScope& operator=(const PeakScope&) = delete;
  int64_t peak_bytes() const;

 private:
  int64_t base_live_;
  int64_t outer_peak_;
};

struct Storage;

class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(Shape shape);
  static Tensor zeros(Shape shape);
  static Tensor full(Shape shape, float value);
  static Tensor from(Shape shape, const std::vector<float>& values);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_[static_cast<size_t>(i < 0 ? i + rank() : i)]; }
  int64_t numel() const { return ab::numel(shape_); }
  int64_t bytes() const { return numel() * static_cast<int64_t>(sizeof(float)); }
  float* data();
  const float* data() const;
  float& operator[](int64_t i) { return data()[i]; }
  float operator[](int64_t i) const { return data()[i]; }

  Tensor reshape(Shape shape) const;  // same storage; -1 infers one dimension
  Tensor clone() const;
  void fill(float value);
  void copy_from(const Tensor& other);  // same numel
  std::vector<float> to_vector() const;

 private:
  std::shared_ptr<Storage> storage_;
  Shape shape_;
};

}  // namespace ab
