// Every backward kernel against central finite differences of a float64 scalar forward of the same
// formula (the kernels are templates; the double instantiation is the one differentiated), and the
// float instantiation against the double one. Loss = Σ forward(θ) ⊙ R for a fixed random R.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "core/threads.h"

#include "kernels/backward.h"
#include "kernels/kernels.h"

using namespace parscale;
namespace kb = parscale::kernels;
using Vec = std::vector<double>;

namespace {

Vec randn(size_t n, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> d(0.0, scale);
  Vec v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::vector<float> to_f(const Vec& v) { return std::vector<float>(v.begin(), v.end()); }

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Max |numeric − analytic| over all coordinates of x, relative to max(1, max|analytic|).
double fd_error(Vec& x, const Vec& analytic, const std::function<double()>& loss, double h = 1e-5) {
  double worst = 0, scale = 1;
  for (double g : analytic) scale = std::max(scale, std::abs(g));
  for (size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + h;
    const double up = loss();
    x[i] = keep - h;
    const double down = loss();
    x[i] = keep;
    worst = std::max(worst, std::abs((up - down) / (2 * h) - analytic[i]));
  }
  return worst / scale;
}

template <typename A, typename B>
double max_diff(const A& a, const B& b) {
  double m = 0, s = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    m = std::max(m, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    s = std::max(s, std::abs(static_cast<double>(b[i])));
  }
  return m / std::max(1.0, s);
}

constexpr double kFdTol = 1e-8;
constexpr double kF32Tol = 2e-5;

TEST(BackwardOps, Matmul) {
  const int64_t M = 5, N = 7, K = 70;  // K spans a full and a partial column tile
  Vec x = randn(M * K, 1), W = randn(N * K, 2), b = randn(N, 3), R = randn(M * N, 4);
  auto forward = [&]() {
    Vec y(M * N);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double s = b[n];
        for (int64_t k = 0; k < K; ++k) s += x[m * K + k] * W[n * K + k];
        y[m * N + n] = s;
      }
    return dot(y, R);
  };
  Vec dx(M * K), dW(N * K, 0.0), db(N, 0.0);
  kb::matmul_backward_input(R.data(), M, W.data(), N, K, dx.data(), false);
  kb::matmul_backward_weight(R.data(), x.data(), M, N, K, dW.data(), db.data());
  EXPECT_LT(fd_error(x, dx, forward), kFdTol);
  EXPECT_LT(fd_error(W, dW, forward), kFdTol);
  EXPECT_LT(fd_error(b, db, forward), kFdTol);
  // accumulate adds; float kernels agree with double.
  Vec dx2 = dx;
  kb::matmul_backward_input(R.data(), M, W.data(), N, K, dx2.data(), true);
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_DOUBLE_EQ(dx2[i], 2 * dx[i]);
  auto xf = to_f(x), Wf = to_f(W), Rf = to_f(R);
  std::vector<float> dxf(M * K), dWf(N * K, 0.0f), dbf(N, 0.0f);
  kb::matmul_backward_input(Rf.data(), M, Wf.data(), N, K, dxf.data(), false);
  kb::matmul_backward_weight(Rf.data(), xf.data(), M, N, K, dWf.data(), dbf.data());
  EXPECT_LT(max_diff(dxf, dx), kF32Tol);
  EXPECT_LT(max_diff(dWf, dW), kF32Tol);
  EXPECT_LT(max_diff(dbf, db), kF32Tol);
}

// The AVX-512 copy's float register tile (accumulators in registers) sums every element in the
// same order with the same FMAs as the AVX2 copy's generic loop: bitwise equal, accumulate or not,
// on shapes with full and partial tiles.
TEST(BackwardOps, Avx512RegisterTileEqualsAvx2Bitwise) {
  if (!kb::kernel_path_supported(kb::KernelPath::AVX512)) GTEST_SKIP() << "no AVX-512 on this CPU";
  const kb::KernelPath keep = kb::active_kernel_path();
  const int64_t M = 131, N = 70, K = 200;  // 17 full row tiles + 2 rows, 3 full column tiles + 8
  auto x = to_f(randn(M * K, 11)), W = to_f(randn(N * K, 12)), R = to_f(randn(M * N, 13));
  auto run = [&](kb::KernelPath p, std::vector<float>& dx, std::vector<float>& dW) {
    kb::set_kernel_path(p);
    dx.assign(M * K, 0.5f);
    dW.assign(N * K, 0.25f);
    kb::matmul_backward_input(R.data(), M, W.data(), N, K, dx.data(), true);
    kb::matmul_backward_weight(R.data(), x.data(), M, N, K, dW.data(), static_cast<float*>(nullptr));
    kb::matmul_backward_input(R.data(), M, W.data(), N, K, dx.data(), true);
  };
  std::vector<float> dx2, dW2, dx5, dW5;
  run(kb::KernelPath::AVX2, dx2, dW2);
  run(kb::KernelPath::AVX512, dx5, dW5);
  kb::set_kernel_path(keep);
  EXPECT_TRUE(dx2 == dx5);
  EXPECT_TRUE(dW2 == dW5);
}

TEST(BackwardOps, MatmulIsThreadCountIndependent) {
  const int64_t M = 67, N = 33, K = 130;
  auto x = to_f(randn(M * K, 5)), W = to_f(randn(N * K, 6)), R = to_f(randn(M * N, 7));
  auto grads = [&](int threads, std::vector<float>& dW, std::vector<float>& dx) {
    const int keep = parscale::num_threads();
    parscale::set_num_threads(threads);
    dW.assign(N * K, 0.f);
    dx.assign(M * K, 0.f);
    kb::matmul_backward_weight(R.data(), x.data(), M, N, K, dW.data(), static_cast<float*>(nullptr));
    kb::matmul_backward_input(R.data(), M, W.data(), N, K, dx.data(), false);
    parscale::set_num_threads(keep);
  };
  std::vector<float> a, b, c, d;
  grads(1, a, b);
  grads(3, c, d);
  EXPECT_EQ(a, c);
  EXPECT_EQ(b, d);
}

TEST(BackwardOps, RmsNorm) {
  const int64_t M = 3, H = 10;
  const double eps = 1e-5;
  Vec x = randn(M * H, 11), w = randn(H, 12), R = randn(M * H, 13);
  for (auto& v : w) v += 1.0;
  auto forward = [&]() {
    double L = 0;
    for (int64_t m = 0; m < M; ++m) {
      double ss = 0;
      for (int64_t i = 0; i < H; ++i) ss += x[m * H + i] * x[m * H + i];
      const double r = 1.0 / std::sqrt(ss / H + eps);
      for (int64_t i = 0; i < H; ++i) L += w[i] * x[m * H + i] * r * R[m * H + i];
    }
    return L;
  };
  Vec dx(M * H), dw(H, 0.0), rstd(M);
  kb::rmsnorm_backward(x.data(), w.data(), R.data(), dx.data(), dw.data(), M, H, eps, false, rstd.data());
  EXPECT_LT(fd_error(x, dx, forward), kFdTol);
  EXPECT_LT(fd_error(w, dw, forward), kFdTol);
  auto xf = to_f(x), wf = to_f(w), Rf = to_f(R);
  std::vector<float> dxf(M * H), dwf(H, 0.f), rf(M);
  kb::rmsnorm_backward(xf.data(), wf.data(), Rf.data(), dxf.data(), dwf.data(), M, H, static_cast<float>(eps), false, rf.data());
  EXPECT_LT(max_diff(dxf, dx), kF32Tol);
  EXPECT_LT(max_diff(dwf, dw), kF32Tol);
}

TEST(BackwardOps, SwiGluAndSilu) {
  const int64_t n = 40;
  Vec g = randn(n, 21, 2.0), u = randn(n, 22), R = randn(n, 23);
  auto silu = [](double v) { return v / (1 + std::exp(-v)); };
  auto fwd = [&]() {
    double L = 0;
    for (int64_t i = 0; i < n; ++i) L += silu(g[i]) * u[i] * R[i];
    return L;
  };
  Vec dg(n), du(n);
  kb::swiglu_backward(g.data(), u.data(), R.data(), dg.data(), du.data(), n);
  EXPECT_LT(fd_error(g, dg, fwd), kFdTol);
  EXPECT_LT(fd_error(u, du, fwd), kFdTol);
  auto fwd2 = [&]() {
    double L = 0;
    for (int64_t i = 0; i < n; ++i) L += silu(g[i]) * R[i];
    return L;
  };
  Vec ds(n);
  kb::silu_backward(g.data(), R.data(), ds.data(), n);
  EXPECT_LT(fd_error(g, ds, fwd2), kFdTol);
  auto gf = to_f(g), uf = to_f(u), Rf = to_f(R);
  std::vector<float> dgf(n), duf(n);
  kb::swiglu_backward(gf.data(), uf.data(), Rf.data(), dgf.data(), duf.data(), n);
  EXPECT_LT(max_diff(dgf, dg), kF32Tol);
  EXPECT_LT(max_diff(duf, du), kF32Tol);
}

TEST(BackwardOps, RopeIsTheTransposeOfTheForward) {
  const int64_t N = 4, NH = 3, D = 8;
  std::vector<int32_t> pos = {0, 5, 17, 300};
  std::vector<float> inv(D / 2), cs(N * D / 2), sn(N * D / 2);
  kb::rope_inv_freq(10000.0, D, inv.data());
  kb::rope_tables(pos.data(), N, inv.data(), D, cs.data(), sn.data());
  Vec x = randn(N * NH * D, 31), R = randn(N * NH * D, 32);
  auto forward = [&]() {
    double L = 0;
    const int64_t half = D / 2;
    for (int64_t t = 0; t < N; ++t)
      for (int64_t h = 0; h < NH; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const double c = cs[t * half + i], s = sn[t * half + i];
          const double x1 = x[(t * NH + h) * D + i], x2 = x[(t * NH + h) * D + i + half];
          L += (x1 * c - x2 * s) * R[(t * NH + h) * D + i] + (x2 * c + x1 * s) * R[(t * NH + h) * D + i + half];
        }
    return L;
  };
  Vec d = R;
  kb::rope_backward(d.data(), N, NH, D, cs.data(), sn.data());
  EXPECT_LT(fd_error(x, d, forward), kFdTol);
  // <rope(x), R> == <x, rope_backward(R)> with the float forward kernel.
  auto xf = to_f(x);
  kb::rope_apply(xf.data(), N, NH, D, cs.data(), sn.data());
  double lhs = 0;
  for (size_t i = 0; i < xf.size(); ++i) lhs += xf[i] * R[i];
  EXPECT_NEAR(lhs, dot(x, d), 1e-5);
}

// Attention over rows with P-style prefix slots, GQA (4 query heads on 2 kv heads), causal tokens.
TEST(BackwardOps, AttentionWithPrefixAndGqa) {
  const int64_t rows = 2, L = 3, T = 2, NH = 4, KVH = 2, D = 4, C = T + L, N = rows * L;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  Vec q = randn(N * NH * D, 41), k = randn(rows * KVH * C * D, 42), v = randn(rows * KVH * C * D, 43), R = randn(N * NH * D, 44);
  std::vector<int64_t> row_begin = {0, L, 2 * L};
  std::vector<int32_t> row(N), nvis(N);
  for (int64_t i = 0; i < N; ++i) {
    row[i] = static_cast<int32_t>(i / L);
    nvis[i] = static_cast<int32_t>(T + i % L + 1);
  }
  auto out_of = [&](Vec& out) {
    out.assign(N * NH * D, 0.0);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t h = 0; h < NH; ++h) {
        const int64_t kvh = h / (NH / KVH);
        Vec s(nvis[i]);
        double mx = -1e300;
        for (int64_t j = 0; j < nvis[i]; ++j) {
          double a = 0;
          for (int64_t e = 0; e < D; ++e) a += q[(i * NH + h) * D + e] * k[((row[i] * KVH + kvh) * C + j) * D + e];
          s[j] = a * scale;
          mx = std::max(mx, s[j]);
        }
        double z = 0;
        for (auto& a : s) z += (a = std::exp(a - mx));
        for (int64_t j = 0; j < nvis[i]; ++j)
          for (int64_t e = 0; e < D; ++e) out[(i * NH + h) * D + e] += s[j] / z * v[((row[i] * KVH + kvh) * C + j) * D + e];
      }
  };
  auto forward = [&]() {
    Vec out;
    out_of(out);
    return dot(out, R);
  };
  Vec out, lse(N * NH), dq(N * NH * D), dk(k.size(), 0.0), dv(v.size(), 0.0), scratch(parscale::num_threads() * kb::attention_backward_scratch(C, D));
  out_of(out);
  kb::attention_lse(q.data(), k.data(), rows, row_begin.data(), nvis.data(), NH, KVH, C, D, scale, lse.data());
  kb::attention_backward(q.data(), k.data(), v.data(), out.data(), lse.data(), R.data(), rows, row_begin.data(), nvis.data(), NH,
                         KVH, C, D, scale, dq.data(), dk.data(), dv.data(), scratch.data());
  EXPECT_LT(fd_error(q, dq, forward), kFdTol);
  EXPECT_LT(fd_error(k, dk, forward), kFdTol);
  EXPECT_LT(fd_error(v, dv, forward), kFdTol);
  // Float: the forward kernel's output and lse feed the float backward.
  auto qf = to_f(q), kf = to_f(k), vf = to_f(v), Rf = to_f(R);
  std::vector<float> of(N * NH * D), lf(N * NH), sc(parscale::num_threads() * C), dqf(N * NH * D), dkf(k.size(), 0.f), dvf(v.size(), 0.f), sc2(parscale::num_threads() * kb::attention_backward_scratch(C, D));
  kb::KVLayer kv{kf.data(), vf.data(), KVH, C, D};
  kb::attention(qf.data(), N, NH, row.data(), nvis.data(), kv, static_cast<float>(scale), of.data(), sc.data(), lf.data());
  EXPECT_LT(max_diff(of, out), kF32Tol);
  EXPECT_LT(max_diff(lf, lse), kF32Tol);
  kb::attention_backward(qf.data(), kf.data(), vf.data(), of.data(), lf.data(), Rf.data(), rows, row_begin.data(), nvis.data(), NH,
                         KVH, C, D, static_cast<float>(scale), dqf.data(), dkf.data(), dvf.data(), sc2.data());
  EXPECT_LT(max_diff(dqf, dq), kF32Tol);
  EXPECT_LT(max_diff(dkf, dk), kF32Tol);
  EXPECT_LT(max_diff(dvf, dv), kF32Tol);
}

TEST(BackwardOps, CrossEntropy) {
  const int64_t M = 4, V = 9;
  Vec x = randn(M * V, 51, 3.0);
  std::vector<int32_t> target = {3, -1, 0, 8};
  std::vector<double> rl(M);
  auto forward = [&]() { return kb::cross_entropy_loss(x.data(), target.data(), M, V, rl.data()); };
  Vec g = x;
  const double loss = kb::cross_entropy_forward_backward(g.data(), target.data(), M, V, 1.0, rl.data());
  EXPECT_NEAR(loss, forward(), 1e-12);
  EXPECT_LT(fd_error(x, g, forward), kFdTol);
  for (int64_t i = 0; i < V; ++i) EXPECT_EQ(g[V + i], 0.0);  // ignored row
  auto xf = to_f(x);
  const double lf = kb::cross_entropy_forward_backward(xf.data(), target.data(), M, V, 1.0f, rl.data());
  EXPECT_NEAR(lf, loss, 1e-5);
  EXPECT_LT(max_diff(xf, g), kF32Tol);
}

// The float copies compute exp without libm (16 lanes, then a scalar tail): across the whole range
// of their arguments, including where they clamp (below e^-87, above e^88), against the double
// copies; and bit for bit whatever the thread count.
TEST(BackwardOps, FloatExpPathsOverTheirWholeRange) {
  const int64_t n = 16 * 70 + 11;
  Vec g(n), u = randn(n, 71), R = randn(n, 72);
  for (int64_t i = 0; i < n; ++i) g[i] = -120.0 + 240.0 * static_cast<double>(i) / (n - 1);  // sigmoid saturates at both ends
  Vec dg(n), du(n);
  kb::swiglu_backward(g.data(), u.data(), R.data(), dg.data(), du.data(), n);
  auto gf = to_f(g), uf = to_f(u), Rf = to_f(R);
  auto swiglu_f = [&](int threads, std::vector<float>& dgf, std::vector<float>& duf) {
    const int keep = parscale::num_threads();
    parscale::set_num_threads(threads);
    dgf.assign(n, 0.f);
    duf.assign(n, 0.f);
    kb::swiglu_backward(gf.data(), uf.data(), Rf.data(), dgf.data(), duf.data(), n);
    parscale::set_num_threads(keep);
  };
  std::vector<float> dg1, du1, dg3, du3;
  swiglu_f(1, dg1, du1);
  swiglu_f(3, dg3, du3);
  EXPECT_LT(max_diff(dg1, dg), kF32Tol);
  EXPECT_LT(max_diff(du1, du), kF32Tol);
  EXPECT_EQ(dg1, dg3);
  EXPECT_EQ(du1, du3);
  // A NaN (a diverged step) stays a NaN in its own element, vector lane or scalar tail alike.
  for (int64_t at : {int64_t{5}, n - 3}) {
    auto gn = gf;
    gn[static_cast<size_t>(at)] = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> dgn(n), dun(n);
    kb::swiglu_backward(gn.data(), uf.data(), Rf.data(), dgn.data(), dun.data(), n);
    EXPECT_TRUE(std::isnan(dgn[static_cast<size_t>(at)]) && std::isnan(dun[static_cast<size_t>(at)])) << at;
    EXPECT_EQ(dgn[static_cast<size_t>(at) - 1], dg1[static_cast<size_t>(at) - 1]);
  }

  // Cross-entropy over a vocabulary of 16·300 + 7 with logits spread over ±60 (exp down to e^-120).
  const int64_t M = 5, V = 16 * 300 + 7;
  Vec x = randn(M * V, 73, 20.0);
  for (double& v : x) v = static_cast<float>(v);  // the same inputs for both copies
  std::vector<int32_t> target = {0, 17, V - 1, -1, 4000};
  std::vector<double> rl(M);
  Vec gd = x;
  const double loss = kb::cross_entropy_forward_backward(gd.data(), target.data(), M, V, 1.0, rl.data());
  auto ce_f = [&](int threads, std::vector<float>& gf2) {
    const int keep = parscale::num_threads();
    parscale::set_num_threads(threads);
    gf2 = to_f(x);
    std::vector<double> rlf(M);
    const double lf = kb::cross_entropy_forward_backward(gf2.data(), target.data(), M, V, 1.0f, rlf.data());
    parscale::set_num_threads(keep);
    return lf;
  };
  std::vector<float> g1, g3;
  const double l1 = ce_f(1, g1), l3 = ce_f(3, g3);
  EXPECT_NEAR(l1, loss, 1e-4 * std::max(1.0, std::abs(loss)));
  EXPECT_LT(max_diff(g1, gd), kF32Tol);
  // Element by element against the same float arithmetic on libm's expf: within a few float
  // roundings (relative), or below what the clamp at e^-87 can leave (absolute).
  double worst_rel = 0;
  for (int64_t m = 0; m < M; ++m) {
    if (target[m] < 0) continue;
    std::vector<float> row(x.begin() + m * V, x.begin() + (m + 1) * V);
    float mx = row[0];
    for (float v : row) mx = std::max(mx, v);
    double sum = 0;
    for (float& v : row) sum += (v = std::exp(v - mx));
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t i = 0; i < V; ++i) {
      if (i == target[m]) continue;  // p − 1: absolute error only (checked above)
      const double want = row[i] * inv, got = g1[m * V + i];
      if (want > 1e-30) worst_rel = std::max(worst_rel, std::abs(got - want) / want);
      else EXPECT_LT(got, 1e-30) << m << " " << i;
    }
  }
  EXPECT_LT(worst_rel, 1e-6);
  EXPECT_EQ(l1, l3);
  EXPECT_EQ(g1, g3);
}

TEST(BackwardOps, SmoothedSoftmax) {
  const int64_t M = 3, P = 4;
  const double eps = 0.05;
  Vec a = randn(M * P, 61), R = randn(M * P, 62);
  auto probs = [&](Vec& p) {
    p.resize(M * P);
    for (int64_t m = 0; m < M; ++m) {
      double mx = -1e300, z = 0;
      for (int64_t s = 0; s < P; ++s) mx = std::max(mx, a[m * P + s]);
      for (int64_t s = 0; s < P; ++s) z += std::exp(a[m * P + s] - mx);
      for (int64_t s = 0; s < P; ++s) p[m * P + s] = std::exp(a[m * P + s] - mx) / z;
    }
  };
  auto forward = [&]() {
    Vec p;
    probs(p);
    double L = 0;
    for (int64_t i = 0; i < M * P; ++i) L += (p[i] * (1 - eps) + eps / P) * R[i];
    return L;
  };
  Vec p, da(M * P);
  probs(p);
  kb::smoothed_softmax_backward(p.data(), R.data(), da.data(), M, P, eps);
  EXPECT_LT(fd_error(a, da, forward), kFdTol);
}

}  // namespace
