// Tensor storage and the tracking allocator, the counter-based RNG, parameter validation.
#include <gtest/gtest.h>

#include <set>

#include "attnbench/autograd.hpp"
#include "attnbench/ops.hpp"
#include "attnbench/params.hpp"
#include "attnbench/rng.hpp"
#include "attnbench/tensor.hpp"

using namespace ab;

TEST(Allocator, LiveAndPeakBytesAreExact) {
  const int64_t live0 = memory_stats().live_bytes;
  PeakScope scope;
  {
    Tensor a = Tensor::empty({1000, 256});  // 1,024,000 bytes, a multiple of 4 KiB? no: rounded up to 4 KiB
    Tensor b = Tensor::empty({16});         // 64 bytes
    EXPECT_EQ(memory_stats().live_bytes - live0, 1024000 + 64 + (4096 - 1024000 % 4096) % 4096);
  }
  EXPECT_EQ(memory_stats().live_bytes, live0);
  EXPECT_EQ(scope.peak_bytes(), 1024000 + 64 + (4096 - 1024000 % 4096) % 4096);
  {
    PeakScope inner;
    Tensor c = Tensor::empty({10});
    EXPECT_EQ(inner.peak_bytes(), 64);
  }
  EXPECT_GE(scope.peak_bytes(), 1024000);  // an inner scope does not hide the outer peak
}

TEST(Allocator, ReshapeSharesStorage) {
  Tensor a = Tensor::from({2, 3}, {1, 2, 3, 4, 5, 6});
  Tensor b = a.reshape({3, -1});
  EXPECT_EQ(b.shape(), (Shape{3, 2}));
  b[0] = 9;
  EXPECT_EQ(a[0], 9);
  EXPECT_THROW(a.reshape({4, 2}), std::invalid_argument);
}

TEST(Rng, StreamsAreDeterministicAndIndependent) {
  RngStream a(1, Purpose::data, 2, 3), b(1, Purpose::data, 2, 3), c(1, Purpose::data, 2, 4), d(2, Purpose::data, 2, 3);
  std::vector<uint32_t> va, vb, vc, vd;
  for (int i = 0; i < 100; ++i) va.push_back(a.next_u32()), vb.push_back(b.next_u32()), vc.push_back(c.next_u32()),
                                 vd.push_back(d.next_u32());
  EXPECT_EQ(va, vb);
  EXPECT_NE(va, vc);
  EXPECT_NE(va, vd);
  // Stateless access agrees with sequential draws.
  RngStream e(1, Purpose::data, 2, 3);
  for (uint64_t i = 0; i < 10; ++i) EXPECT_EQ(e.at(i), va[i]);
}

TEST(Rng, KnownValuesPinTheGenerator) {
  // Golden words: a change in the generator changes every data set and initialisation, so it
  // must show up here (values from this implementation of Philox-4x32-10 and its key hashing).
  RngStream r(0, Purpose::data);
  const std::vector<uint32_t> golden = {2921935749u, 27850799u, 2106558984u, 1233000876u};
  for (size_t i = 0; i < golden.size(); ++i) EXPECT_EQ(r.next_u32(), golden[i]) << "word " << i;
  RngStream again(0, Purpose::data);
  EXPECT_EQ(again.at(2), golden[2]);
}

TEST(Rng, DistributionsLookRight) {
  RngStream r(5, Purpose::check);
  double s = 0, s2 = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double v = r.normal();
    s += v, s2 += v * v;
  }
  EXPECT_NEAR(s / n, 0.0, 0.01);
  EXPECT_NEAR(s2 / n, 1.0, 0.02);
  std::vector<int> counts(7, 0);
  for (int i = 0; i < 70000; ++i) ++counts[r.below(7)];
  for (int c : counts) EXPECT_NEAR(c, 10000, 500);
  for (int i = 0; i < 1000; ++i) {
    const auto v = r.range(-3, 3);
    EXPECT_GE(v, -3);
    EXPECT_LE(v, 3);
  }
}

TEST(Params, ResolveFillsDefaultsAndRejectsBadInput) {
  const std::vector<ParamSpec> specs = {int_param("layers", 2, "", 1, 64), num_param("lr", 1e-3, "", 0, 1),
                                        bool_param("causal", false, ""),
                                        enum_param("pooling", "mean", {"mean", "cls"}, "")};
  const Json r = resolve_params(specs, Json{{"layers", "4"}}, "model");
  EXPECT_EQ(r["layers"], 4);
  EXPECT_EQ(r["lr"], 1e-3);
  EXPECT_EQ(r["pooling"], "mean");
  auto message = [&](const Json& given) {
    try {
      resolve_params(specs, given, "model");
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({{"layer", "3"}}).find("did you mean 'layers'"), std::string::npos);
  EXPECT_NE(message({{"layers", "two"}}).find("must be an integer"), std::string::npos);
  EXPECT_NE(message({{"layers", "100"}}).find("nearest valid value: 64"), std::string::npos);
  EXPECT_NE(message({{"lr", "-1"}}).find("out of range"), std::string::npos);
  EXPECT_NE(message({{"causal", "maybe"}}).find("true or false"), std::string::npos);
  EXPECT_NE(message({{"pooling", "max"}}).find("valid: mean, cls"), std::string::npos);
}

TEST(Autograd, NoGradRecordsNothingAndGradientsAccumulate) {
  Var x(Tensor::from({2}, {1, 2}), true);
  {
    NoGrad ng;
    Var y = scale(x, 3.f);
    EXPECT_FALSE(y.requires_grad());
  }
  Var y = add(scale(x, 3.f), x);  // x used twice: dy/dx = 4
  sum(y).backward();
  EXPECT_EQ(x.grad().to_vector(), (std::vector<float>{4, 4}));
}
