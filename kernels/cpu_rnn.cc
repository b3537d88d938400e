// The LSTM and GRU time loops on the CPU as XLA FFI custom calls, the recurrent matmul of every
// step split over the cores (seqjax.kernels.cpu builds this file and registers its handlers).
//
// Why: XLA:CPU runs the small per-step matmul `h [B, H] @ W_h [H, G]` of a lax.scan on one
// core, so a second core buys little (issue #19, benchmarks/README.md). Here each of P threads
// owns a contiguous range of hidden units: it keeps the columns of W_h for its units (all the
// gates) packed in its own cache, computes those gates and the new state of its units, and
// the threads meet at one barrier per step (the next step needs all of h).
//
// The LSTM's maths is that of seqjax.core.cells.LSTM (PyTorch layout, gates i, f, g, o):
//   pre = x_t W_x + b + h_{t-1} W_h; i, f, o = sigmoid; g = tanh; c_t = f c_{t-1} + i g;
//   h_t = o tanh(c_t); a step t >= lengths[b] keeps row b's carry (h, c) unchanged.
// Each handler computes what the scan backend's loops compute for one chunk of K steps
// (seqjax.core.recurrent._scan_forward / _scan_bwd), and the rest of that backend is shared.
// The forward computes the input projection itself, each thread for its own units' columns,
// the next step's part before the barrier (it does not depend on h): the [K, B, 4H]
// projection is then never written to memory and read back, which cost more than its matmul;
// the backward can sum the weight gradients too (issue #19, benchmarks/README.md).
//   forward:  xs [K,B,D], w_x [D,4H], b [4H], w_h [H,4H], h0 [B,H], c0 [B,H], t0 [],
//             lengths [B] -> hs [K,B,H] (the carry's h after each step), cs [K,B,H],
//             acts [K,B,4H] (the activated gates; tanh(c_t) is recomputed from them and c)
//   backward: dhs [K,B,H], acts, cs [K,B,H] and c_first [B,H] (the forward's cs and the c
//             before the chunk: c before step s is cs[s - 1], c_first for s = 0), w_h,
//             dh [B,H], dc [B,H], t0, lengths, xs [K,B,D] or [0], hs [K,B,H] and h_first [B,H]
//             or [0] both -> dgx [K,B,4H], dh0 [B,H], dc0 [B,H], dW_x [D,4H] and db [4H] ([0]
//             if xs is), dW_h [H,4H] ([0] if hs is), the chunk's sums; dgx may alias acts
//             (each thread reads a step's gates of its units before it writes them). Reading
//             the carries before each step from the forward's outputs spares XLA building
//             [c0; cs[:-1]] (a copy of [K,B,H] per carry).
// The GRU (reset="after") is described above GruForward.
// sigmoid(x) = (1 + tanh(x/2)) / 2 and tanh is the rational approximation XLA:CPU uses for
// float32, so results match the scan backend to float32 rounding.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;  // floats per vector (one AVX-512 register; two AVX2 ones)
typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef float vf_u __attribute__((vector_size(kLanes * sizeof(float)), aligned(4)));

inline vf load(const float* p) { return *reinterpret_cast<const vf_u*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vf_u*>(p) = v; }
inline vf splat(float x) { return vf{} + x; }

// The first m <= kLanes floats at src as a vector (the rest zero), and the inverse: a hidden
// unit range need not fill its last vector.
inline vf load_n(const float* src, int64_t m) {
  if (m == kLanes) return load(src);  // the common case: no copy through the stack
  alignas(64) float buf[kLanes] = {};
  std::memcpy(buf, src, m * sizeof(float));
  return load(buf);
}
inline void store_n(float* dst, vf v, int64_t m) {
  if (m == kLanes) return store(dst, v);
  alignas(64) float buf[kLanes];
  store(buf, v);
  std::memcpy(dst, buf, m * sizeof(float));
}

// tanh as XLA:CPU's float32 rational approximation (13/6, Eigen's coefficients; XLA's
// EmitFastTanh), the input clamped to [-9, 9], and x itself for |x| < 4e-4: the same values
// the scan backend's tanh gives, which matters where gates saturate. A NaN stays NaN (the
// clamps keep x where a comparison is false), as in XLA: a NaN input (e.g. the embedding of an
// out-of-range id) must not turn into a saturated gate.
inline vf vtanh(vf x0) {
  const vf hi = splat(9.0f);
  vf x = x0 > hi ? hi : x0;
  x = x < -hi ? -hi : x;
  const vf x2 = x * x;
  vf p = splat(-2.76076847742355e-16f);
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 - 8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * x;
  vf q = splat(1.19825839466702e-06f);
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  const vf ax = x0 < 0 ? -x0 : x0;
  return ax < 4e-4f ? x0 : p / q;
}

inline vf vsigmoid(vf x) { return vtanh(x * 0.5f) * 0.5f + 0.5f; }

// C[M, N] += A[M, Kd] (row stride lda) @ Bp[Kd, N] (row stride ldb) for N a multiple of
// kLanes: register tiles of MR rows x NV vectors, the k loop innermost.
template <int MR, int NV>
inline void tile(const float* a, int64_t lda, const float* bp, int64_t ldb, float* c,
                 int64_t ldc, int64_t kd) {
  vf acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = load(c + r * ldc + v * kLanes);
  for (int64_t k = 0; k < kd; ++k) {
    vf w[NV];
    for (int v = 0; v < NV; ++v) {
      w[v] = load(bp + k * ldb + v * kLanes);
      // keep w[v] in a register: folded into each FMA as a memory operand, it is loaded MR
      // times (GCC 12 does so)
      __asm__("" : "+x"(w[v]));
    }
    for (int r = 0; r < MR; ++r) {
      const float s = a[r * lda + k];
      for (int v = 0; v < NV; ++v) acc[r][v] += s * w[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) store(c + r * ldc + v * kLanes, acc[r][v]);
}

#ifdef __AVX512F__
constexpr int kMR = 4, kNV = 4;  // 16 accumulators + 4 weight vectors of 32 registers
#else
constexpr int kMR = 4, kNV = 2;
#endif

// The column strip [j, j + NV * kLanes) for every row: the strip of Bp (kd x NV vectors, e.g.
// 256 x 64 floats = 64 KiB) is read from L2 once per step and reused by every row tile.
template <int NV>
inline void column_strip(const float* a, int64_t lda, const float* bp, int64_t n, float* c,
                         int64_t ldc, int64_t m, int64_t kd) {
  int64_t i = 0;
  for (; i + kMR <= m; i += kMR) tile<kMR, NV>(a + i * lda, lda, bp, n, c + i * ldc, ldc, kd);
  for (; i < m; ++i) tile<1, NV>(a + i * lda, lda, bp, n, c + i * ldc, ldc, kd);
}

// Rows of Bp per pass: a strip of kKC x NV vectors (128 x 64 floats = 32 KiB) stays in L1
// while every row tile uses it (64 and 1024 rows measured no better, 32 worse).
constexpr int64_t kKC = 128;

// Rows of dpre per weight-gradient matmul in the backward loops (BlockSums; steps x batch,
// rounded down to whole steps): one pass over the accumulator per kDwRows rows (32, 256
// measured no better).
constexpr int64_t kDwRows = 128;

void gemm_acc(const float* a, int64_t lda, const float* bp, int64_t n, float* c, int64_t ldc,
              int64_t m, int64_t kd) {
  for (int64_t k0 = 0; k0 < kd; k0 += kKC) {
    const int64_t kc = std::min(kKC, kd - k0);
    const float* ak = a + k0;
    const float* bk = bp + k0 * n;
    int64_t j = 0;
    for (; j + kNV * kLanes <= n; j += kNV * kLanes)
      column_strip<kNV>(ak, lda, bk + j, n, c + j, ldc, m, kc);
    for (; j + kLanes <= n; j += kLanes) column_strip<1>(ak, lda, bk + j, n, c + j, ldc, m, kc);
  }
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// C[M, N] = bias[N] (in every row) + A[M, Kd] (row stride lda) @ Bp[Kd, N]: a pre-activation
// of the forward loops (own columns, gate-major; N = 0 for a thread without units).
void bias_gemm(float* c, const float* bias, const float* a, int64_t lda, const float* bp,
               int64_t n, int64_t m, int64_t kd) {
  for (int64_t r = 0; r < m; ++r) std::memcpy(c + r * n, bias, n * sizeof(float));
  if (n) gemm_acc(a, lda, bp, n, c, n, m, kd);
}

// A barrier for the P threads of one call: spins briefly, then yields the core (another
// process may share it: a spinning thread must not hold up the one it waits for).
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    if (n_ == 1) return;
    const int gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.store(gen + 1, std::memory_order_release);
      return;
    }
    for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins > 4000) std::this_thread::yield();
#if defined(__x86_64__)
      else __builtin_ia32_pause();
#endif
    }
  }

 private:
  const int n_;
  std::atomic<int> count_{0};
  std::atomic<int> gen_{0};
};

// Long-lived worker threads. A thread started per call begins on its parent's core and
// waits there for the scheduler to move it (measured: ~1.7 ms per call, more than a chunk's
// arithmetic); these stay where the scheduler put them. Between jobs a worker spins for a
// short while (the next chunk's call comes within microseconds), then sleeps, so it never
// holds a core while XLA computes something else.
class Pool {
 public:
  // Run body(p) for p in [0, threads) (the caller runs p = 0); false, having run nothing, if
  // another call holds the pool (the caller then runs single-threaded).
  bool run(int threads, const std::function<void(int)>& body) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (static_cast<int>(workers_.size()) < threads - 1) {
        const int p = static_cast<int>(workers_.size()) + 1;
        workers_.emplace_back([this, p] { loop(p); });
      }
      body_ = &body;
      active_ = threads;
      pending_.store(threads - 1, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    body(0);
    for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins)
      if (spins > 4000) std::this_thread::yield();
    return true;
  }

 private:
  void loop(int p) {
    int64_t seen = 0;
    for (;;) {
      int64_t gen = generation_.load(std::memory_order_acquire);
      for (int spins = 0; gen == seen && spins < 2000; ++spins) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
        gen = generation_.load(std::memory_order_acquire);
      }
      if (gen == seen) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        gen = generation_.load(std::memory_order_acquire);
      }
      seen = gen;
      if (p < active_) {
        (*body_)(p);
        pending_.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }

  std::mutex busy_, mutex_;
  std::condition_variable wake_;
  std::vector<std::thread> workers_;  // never joined: they live as long as the process
  const std::function<void(int)>* body_ = nullptr;
  int active_ = 0;
  std::atomic<int> pending_{0};
  std::atomic<int64_t> generation_{0};
};

// The process's pool (leaked on purpose: workers outlive static destructors). A forked child
// has none of its parent's workers, so it starts a pool of its own.
Pool& pool() {
  static std::mutex mutex;
  static Pool* instance = nullptr;
  static pid_t owner = -1;
  std::lock_guard<std::mutex> lock(mutex);
  if (instance == nullptr || owner != getpid()) {
    instance = new Pool();
    owner = getpid();
  }
  return *instance;
}

// Run body(p, threads) for p in [0, threads): on the pool, or on the caller alone if the pool
// is busy with another call.
template <typename F>
void run_parallel(int threads, F&& body) {
  const std::function<void(int)> job = [&](int p) { body(p, threads); };
  if (threads > 1 && pool().run(threads, job)) return;
  body(0, 1);
}

// The hidden units [lo, hi) of thread p of P: contiguous, multiples of kLanes but the last.
inline void unit_range(int64_t hid, int p, int threads, int64_t* lo, int64_t* hi) {
  const int64_t blocks = (hid + kLanes - 1) / kLanes;
  *lo = std::min(hid, blocks * p / threads * kLanes);
  *hi = std::min(hid, blocks * (p + 1) / threads * kLanes);
}

int threads_for(int64_t requested, int64_t hid) {
  const int64_t most = std::max<int64_t>(1, (hid + kLanes - 1) / kLanes);
  return static_cast<int>(std::max<int64_t>(1, std::min(requested, most)));
}

// This thread's units' columns of a weight src [rows, Q * H] (Q gate blocks of H columns),
// gate-major and padded: dst[k, q * np + u] = src[k, q * H + lo + u] for u < nu (dst zeroed,
// rows x Q * np floats). The forward loops' layout: one matmul gives all gates of own units.
void pack_gate_columns(float* dst, const float* src, int64_t rows, int q_count, int64_t hid,
                       int64_t lo, int64_t nu, int64_t np) {
  for (int64_t k = 0; k < rows; ++k)
    for (int q = 0; q < q_count; ++q)
      std::memcpy(dst + (k * q_count + q) * np, src + (k * q_count + q) * hid + lo,
                  nu * sizeof(float));
}

// Rows lo..lo + nu of w [H, G], transposed and padded: dst[g, u] = w[lo + u, g] (dst zeroed,
// G x np floats). The backward loops' layout for dh_prev[:, own units] = dpre @ W_h^T.
void pack_rows_transposed(float* dst, const float* w, int64_t gates, int64_t lo, int64_t nu,
                          int64_t np) {
  for (int64_t u = 0; u < nu; ++u)
    for (int64_t g = 0; g < gates; ++g) dst[g * np + u] = w[(lo + u) * gates + g];
}

// A carry before step s of a chunk, for the backward loops: the forward's output of step s - 1
// (outs [K, B, H]), or the carry before the chunk (first [B, H]) for s = 0.
inline const float* carry_before(const ffi::Buffer<ffi::F32>& outs,
                                 const ffi::Buffer<ffi::F32>& first, int64_t s) {
  return s ? outs.typed_data() + (s - 1) * first.element_count() : first.typed_data();
}

// One thread's share of a weight gradient dW [R, Q * H] += A^T dP (and optionally db += sum of
// dP's rows) over a backward loop's steps, summed per block of `span` steps: dp [span * B,
// Q * np] holds the block's gradients of own units (gate-major, padded; lanes past nu hold 0),
// at [R, span * B] the block's inputs transposed, and one matmul per block adds at @ dp to dw
// [R, Q * np]: the accumulator then streams through the cache once per block, not once per
// step (it need not fit L2 beside W_h^T), while XLA:CPU would read the whole [K, B, QH]
// gradient once more and transpose the inputs. Empty (rows == 0) when not asked for.
struct BlockSums {
  int64_t rows = 0, width = 0, batch = 0, kb = 0, span = 1, filled = 0;
  bool bias = false;
  std::vector<float> dp, at, dw, db;

  void init(int64_t rows_, int64_t width_, int64_t batch_, bool bias_) {
    rows = rows_;
    width = width_;
    batch = batch_;
    bias = bias_ && rows_ > 0;
    span = std::max<int64_t>(1, kDwRows / std::max<int64_t>(batch, 1));
    kb = span * batch;  // the block's rows of dp (columns of at)
    filled = 0;
    if (!rows) return;
    dp.assign(kb * width, 0.0f);
    at.resize(rows * kb);
    dw.assign(rows * width, 0.0f);
    if (bias) db.assign(width, 0.0f);
  }
  bool on() const { return rows > 0; }
  // This step's rows of dp ([B, Q * np]; null when off).
  float* step_dp() { return on() ? dp.data() + filled * batch * width : nullptr; }
  // Rows row0.. of at for this step: at[row0 + k, filled * B + b] = src[b, k], k < n.
  void put_inputs(const float* src, int64_t n, int64_t row0) {
    float* at_s = at.data() + filled * batch;
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t k = 0; k < n; ++k) at_s[(row0 + k) * kb + b] = src[b * n + k];
  }
  // After this step's dp and inputs are written: the bias sum, and the block's matmul once
  // `span` steps are in (or at the loop's last step).
  void end_step(bool last) {
    if (bias) {
      const float* dp_s = step_dp();
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t v = 0; v < width; v += kLanes)
          store(&db[v], load(&db[v]) + load(&dp_s[b * width + v]));
    }
    if (++filled == span || last) {
      gemm_acc(at.data(), kb, dp.data(), width, dw.data(), width, rows, filled * batch);
      filled = 0;
    }
  }
  // Own columns q * H + lo + u of dW's rows k0..k1 into dst [k1 - k0, Q * H].
  void write_rows(float* dst, int64_t k0, int64_t k1, int q_count, int64_t hid, int64_t lo,
                  int64_t nu, int64_t np) const {
    for (int64_t k = k0; k < k1; ++k)
      for (int q = 0; q < q_count; ++q)
        std::memcpy(dst + (k - k0) * q_count * hid + q * hid + lo, &dw[k * width + q * np],
                    nu * sizeof(float));
  }
  void write_bias(float* dst, int q_count, int64_t hid, int64_t lo, int64_t nu,
                  int64_t np) const {
    for (int q = 0; q < q_count; ++q)
      std::memcpy(dst + q * hid + lo, &db[q * np], nu * sizeof(float));
  }
};

ffi::Error LstmForward(ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> w_x,
                       ffi::Buffer<ffi::F32> b, ffi::Buffer<ffi::F32> w_h,
                       ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                       ffi::Buffer<ffi::S32> t0_buf, ffi::Buffer<ffi::S32> lengths,
                       int64_t requested_threads, ffi::ResultBuffer<ffi::F32> hs,
                       ffi::ResultBuffer<ffi::F32> cs, ffi::ResultBuffer<ffi::F32> acts) {
  const auto dims = xs.dimensions();
  const auto wdims = w_h.dimensions();
  if (dims.size() != 3 || wdims.size() != 2)
    return ffi::Error::InvalidArgument("xs must be [K, B, D] and w_h [H, 4H]");
  const int64_t steps = dims[0], batch = dims[1], in = dims[2];
  const int64_t hid = wdims[0], gates = wdims[1];
  const int32_t t0 = t0_buf.typed_data()[0];
  const int32_t* len = lengths.typed_data();
  const float* xp = xs.typed_data();
  const float* wx = w_x.typed_data();
  const float* w = w_h.typed_data();
  const float* bias = b.typed_data();
  float* hsp = hs->typed_data();
  float* csp = cs->typed_data();
  float* actp = acts->typed_data();
  const bool save = acts->element_count() != 0;  // empty acts: a pass not differentiated
  const int requested = threads_for(requested_threads, hid);
  Barrier barrier(requested);

  run_parallel(requested, [&](int p, int threads) {
    int64_t lo, hi;
    unit_range(hid, p, threads, &lo, &hi);
    const int64_t nu = hi - lo, np = round_up(nu, kLanes), n = 4 * np;
    // This thread's columns of [W_x; W_h] and b, gate-major: packed[k, q * np + u] is column
    // q * H + lo + u of W_x (k < D) or W_h (row k - D); two pre-activation buffers, so that
    // the next step's input part (b + x W_x, independent of h) is computed before the barrier.
    thread_local std::vector<float> packed, bp, pre[2];  // reused: no page faults per call
    packed.assign((in + hid) * n, 0.0f);
    bp.assign(n, 0.0f);
    for (auto& v : pre) v.resize(batch * n);
    pack_gate_columns(packed.data(), wx, in, 4, hid, lo, nu, np);
    pack_gate_columns(packed.data() + in * n, w, hid, 4, hid, lo, nu, np);
    pack_gate_columns(bp.data(), bias, 1, 4, hid, lo, nu, np);
    const float* packed_h = packed.data() + in * n;
    auto input_part = [&](int64_t s, float* dst) {  // dst[B, n] = b + x_s W_x (own columns)
      bias_gemm(dst, bp.data(), xp + s * batch * in, in, packed.data(), n, batch, in);
    };
    input_part(0, pre[0].data());
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t t = t0 + s;
      const float* h_prev = s ? hsp + (s - 1) * batch * hid : h0.typed_data();
      const float* c_prev = s ? csp + (s - 1) * batch * hid : c0.typed_data();
      float* pre_s = pre[s & 1].data();
      if (nu) gemm_acc(h_prev, hid, packed_h, n, pre_s, n, batch, hid);
      float* h_out = hsp + s * batch * hid;
      float* c_out = csp + s * batch * hid;
      float* a_out = actp + s * batch * gates;
      for (int64_t r = 0; r < batch; ++r) {
        const bool live = t < len[r];
        const float* pb = pre_s + r * n;
        for (int64_t u = 0; u < nu; u += kLanes) {
          const int64_t j = lo + u, row = r * hid + j;
          const int64_t m = std::min<int64_t>(kLanes, nu - u);
          const vf cp = load_n(c_prev + row, m);
          const vf i = vsigmoid(load(pb + u)), f = vsigmoid(load(pb + np + u));
          const vf g = vtanh(load(pb + 2 * np + u)), o = vsigmoid(load(pb + 3 * np + u));
          const vf c = f * cp + i * g;
          const vf tc = vtanh(c);
          const vf h = o * tc;
          if (save) {
            const vf gate[4] = {i, f, g, o};
            for (int q = 0; q < 4; ++q) store_n(a_out + r * gates + q * hid + j, gate[q], m);
          }
          if (live) {
            store_n(h_out + row, h, m);
            store_n(c_out + row, c, m);
          } else {
            std::memcpy(h_out + row, h_prev + row, m * sizeof(float));
            std::memcpy(c_out + row, c_prev + row, m * sizeof(float));
          }
        }
      }
      if (s + 1 < steps) input_part(s + 1, pre[(s + 1) & 1].data());
      if (threads > 1) barrier.wait();  // step s + 1 reads all of h_s
    }
  });
  return ffi::Error::Success();
}

ffi::Error LstmBackward(ffi::Buffer<ffi::F32> dhs, ffi::Buffer<ffi::F32> acts,
                        ffi::Buffer<ffi::F32> cs, ffi::Buffer<ffi::F32> c_first,
                        ffi::Buffer<ffi::F32> w_h, ffi::Buffer<ffi::F32> dh_last,
                        ffi::Buffer<ffi::F32> dc_last, ffi::Buffer<ffi::S32> t0_buf,
                        ffi::Buffer<ffi::S32> lengths, ffi::Buffer<ffi::F32> xs,
                        ffi::Buffer<ffi::F32> hs, ffi::Buffer<ffi::F32> h_first,
                        int64_t requested_threads,
                        ffi::ResultBuffer<ffi::F32> dgx, ffi::ResultBuffer<ffi::F32> dh0,
                        ffi::ResultBuffer<ffi::F32> dc0, ffi::ResultBuffer<ffi::F32> dwx_out,
                        ffi::ResultBuffer<ffi::F32> db_out, ffi::ResultBuffer<ffi::F32> dwh_out) {
  const auto dims = acts.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("acts must be [K, B, 4H]");
  const int64_t steps = dims[0], batch = dims[1], gates = dims[2], hid = gates / 4;
  // With xs [K, B, D] and hs [K, B, H] (h before step s: hs[s - 1]; either may be empty) the
  // weight gradients are summed here too: dW_x += x_t^T dpre_t, db += sum_b dpre_t and
  // dW_h += h_{t-1}^T dpre_t, each thread for its own units' columns, while dpre_t is in
  // cache (XLA:CPU reads the [K, B, 4H] dgx once more for each otherwise, and transposes h).
  const bool proj = xs.element_count() != 0;
  const int64_t in = proj ? xs.dimensions()[2] : 0;
  const int64_t hin = hs.element_count() != 0 ? hid : 0;
  const int64_t rows = in + hin;  // of [x_t | h_{t-1}]^T and of the stacked [dW_x; dW_h]
  const int32_t t0 = t0_buf.typed_data()[0];
  const int32_t* len = lengths.typed_data();
  const float* w = w_h.typed_data();
  float* dgxp = dgx->typed_data();
  float* dh = dh0->typed_data();  // the running carry cotangent, in place: own units only
  float* dc = dc0->typed_data();
  std::memcpy(dh, dh_last.typed_data(), batch * hid * sizeof(float));
  std::memcpy(dc, dc_last.typed_data(), batch * hid * sizeof(float));
  const int requested = threads_for(requested_threads, hid);
  Barrier barrier(requested);

  run_parallel(requested, [&](int p, int threads) {
    int64_t lo, hi;
    unit_range(hid, p, threads, &lo, &hi);
    const int64_t nu = hi - lo, np = round_up(nu, kLanes), n4 = 4 * np;
    // rows lo..hi of W_h, transposed: packed[g, u] = w_h[lo + u, g] (dh_prev = dpre @ W_h^T)
    thread_local std::vector<float> packed, acc;
    packed.assign(gates * np, 0.0f);
    acc.resize(batch * np);
    // [dW_x; dW_h] += [x_t | h_{t-1}]^T dpre_t (one matmul for both), db += sum_b dpre_t
    thread_local BlockSums sums;
    sums.init(rows, n4, batch, proj);
    pack_rows_transposed(packed.data(), w, gates, lo, nu, np);
    for (int64_t s = steps - 1; s >= 0; --s) {
      const int64_t t = t0 + s;
      const float* a_s = acts.typed_data() + s * batch * gates;
      const float* cp_s = carry_before(cs, c_first, s);
      const float* dh_s = dhs.typed_data() + s * batch * hid;
      float* dgx_s = dgxp + s * batch * gates;
      float* dpk_s = sums.step_dp();
      for (int64_t b = 0; b < batch; ++b) {
        const bool live = t < len[b];
        for (int64_t u = 0; u < nu; u += kLanes) {
          const int64_t j = lo + u, row = b * hid + j;
          const int64_t m = std::min<int64_t>(kLanes, nu - u);
          if (!live) {  // the carry passes through; no gate gradient
            for (int q = 0; q < 4; ++q) {
              std::memset(dgx_s + b * gates + q * hid + j, 0, m * sizeof(float));
              if (dpk_s) store(&dpk_s[b * n4 + q * np + u], vf{});
            }
            continue;
          }
          auto get = [m](const float* src) { return load_n(src, m); };
          const vf i = get(a_s + b * gates + j), f = get(a_s + b * gates + hid + j);
          const vf g = get(a_s + b * gates + 2 * hid + j);
          const vf o = get(a_s + b * gates + 3 * hid + j);
          const vf cp = get(cp_s + row);
          const vf tc = vtanh(f * cp + i * g);  // tanh(c_t), as the forward computed it
          const vf dhv = get(dh + row) + get(dh_s + row);
          const vf dcv = get(dc + row) + dhv * o * (1.0f - tc * tc);
          const vf d[4] = {dcv * g * i * (1.0f - i), dcv * cp * f * (1.0f - f),
                           dcv * i * (1.0f - g * g), dhv * tc * o * (1.0f - o)};
          for (int q = 0; q < 4; ++q) {
            store_n(dgx_s + b * gates + q * hid + j, d[q], m);
            if (dpk_s) store(&dpk_s[b * n4 + q * np + u], d[q]);  // lanes past m hold 0
          }
          store_n(dc + row, dcv * f, m);
        }
      }
      if (threads > 1) barrier.wait();  // the matmul reads every unit's gate gradients
      if (nu) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        gemm_acc(dgx_s, gates, packed.data(), np, acc.data(), np, batch, gates);
        for (int64_t b = 0; b < batch; ++b)
          if (t < len[b]) std::memcpy(dh + b * hid + lo, &acc[b * np], nu * sizeof(float));
      }
      if (sums.on() && nu) {
        if (proj) sums.put_inputs(xs.typed_data() + s * batch * in, in, 0);
        if (hin) sums.put_inputs(carry_before(hs, h_first, s), hid, in);
        sums.end_step(s == 0);
      }
      // no second barrier: the next step's first phase writes other rows of dgx and reads
      // only this thread's units of dh and dc
    }
    if (sums.on()) {
      sums.write_rows(dwx_out->typed_data(), 0, in, 4, hid, lo, nu, np);
      sums.write_rows(dwh_out->typed_data(), in, rows, 4, hid, lo, nu, np);
      if (proj) sums.write_bias(db_out->typed_data(), 4, hid, lo, nu, np);
    }
  });
  return ffi::Error::Success();
}


// The GRU of seqjax.core.cells.GRU with reset="after" (PyTorch's nn.GRU, cuDNN), gates r, z, n:
//   gx = x_t W_x + b_x; zh = h_{t-1} W_h + b_h; r = sigmoid(gx_r + zh_r);
//   u = sigmoid(gx_z + zh_z); n = tanh(gx_n + r zh_n); h_t = n + u (h_{t-1} - n).
//   forward:  xs [K,B,D], w_x [D,3H], b_x [3H], w_h [H,3H], b_h [3H], h0 [B,H], t0, lengths
//             -> hs [K,B,H], rzn [K,B,3H] (r, u, n), zn [K,B,H] (zh_n); the last two empty
//             ([0]) in a pass not differentiated
//   backward: dhs [K,B,H], rzn, zn, hs [K,B,H] and h_first [B,H] (h before step s, as in
//             LstmBackward), w_h, dh [B,H], t0, lengths, xs [K,B,D]
//             or [0], attribute weights (sum dW_h and db_h) -> dgx [K,B,3H], dh0 [B,H], dW_x
//             [D,3H] and db_x [3H] ([0] if xs is), dW_h [H,3H] and db_h [3H] ([0] unless
//             weights), the chunk's sums, as the LSTM's backward sums them (per block of steps):
//             dW_x += x_t^T dgx_t, dW_h += h_{t-1}^T dz_t with dz = [dpre_r, dpre_u, dpre_n r].
//             dgx has rzn's shape and may be written over it (the caller's aliasing): each
//             thread reads a step's r, u, n of its own units before it writes their gradients
//             in the same places, and no step reads another step's.
ffi::Error GruForward(ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> w_x,
                      ffi::Buffer<ffi::F32> b_x, ffi::Buffer<ffi::F32> w_h,
                      ffi::Buffer<ffi::F32> b_h, ffi::Buffer<ffi::F32> h0,
                      ffi::Buffer<ffi::S32> t0_buf, ffi::Buffer<ffi::S32> lengths,
                      int64_t requested_threads, ffi::ResultBuffer<ffi::F32> hs,
                      ffi::ResultBuffer<ffi::F32> rzns, ffi::ResultBuffer<ffi::F32> zns) {
  const auto dims = xs.dimensions();
  const auto wdims = w_h.dimensions();
  if (dims.size() != 3 || wdims.size() != 2)
    return ffi::Error::InvalidArgument("xs must be [K, B, D] and w_h [H, 3H]");
  const int64_t steps = dims[0], batch = dims[1], in = dims[2];
  const int64_t hid = wdims[0], gates = wdims[1];
  const int32_t t0 = t0_buf.typed_data()[0];
  const int32_t* len = lengths.typed_data();
  const float* xp = xs.typed_data();
  const bool save = rzns->element_count() != 0;  // empty residuals: a pass not differentiated
  const int requested = threads_for(requested_threads, hid);
  Barrier barrier(requested);

  run_parallel(requested, [&](int p, int threads) {
    int64_t lo, hi;
    unit_range(hid, p, threads, &lo, &hi);
    const int64_t nu = hi - lo, np = round_up(nu, kLanes), n = 3 * np;
    // This thread's columns of W_x, W_h, b_x and b_h, gate-major (packed[k, q * np + u] is
    // column q * H + lo + u); the input part gx (b_x + x W_x, independent of h) of the next
    // step is computed before the barrier, into the other of two buffers, as in LstmForward.
    // zh = b_h + h W_h stays apart: n needs r * zh_n.
    thread_local std::vector<float> packed_x, packed_h, bx, bh, gxb[2], zh;
    packed_x.assign(in * n, 0.0f);
    packed_h.assign(hid * n, 0.0f);
    bx.assign(n, 0.0f);
    bh.assign(n, 0.0f);
    for (auto& v : gxb) v.resize(batch * n);
    zh.resize(batch * n);
    pack_gate_columns(packed_x.data(), w_x.typed_data(), in, 3, hid, lo, nu, np);
    pack_gate_columns(packed_h.data(), w_h.typed_data(), hid, 3, hid, lo, nu, np);
    pack_gate_columns(bx.data(), b_x.typed_data(), 1, 3, hid, lo, nu, np);
    pack_gate_columns(bh.data(), b_h.typed_data(), 1, 3, hid, lo, nu, np);
    auto input_part = [&](int64_t s, float* dst) {  // dst[B, n] = b_x + x_s W_x (own columns)
      bias_gemm(dst, bx.data(), xp + s * batch * in, in, packed_x.data(), n, batch, in);
    };
    input_part(0, gxb[0].data());
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t t = t0 + s;
      const float* h_prev = s ? hs->typed_data() + (s - 1) * batch * hid : h0.typed_data();
      const float* gx_s = gxb[s & 1].data();
      bias_gemm(zh.data(), bh.data(), h_prev, hid, packed_h.data(), n, batch, hid);
      float* h_out = hs->typed_data() + s * batch * hid;
      float* rzn_out = save ? rzns->typed_data() + s * batch * gates : nullptr;
      float* zn_out = save ? zns->typed_data() + s * batch * hid : nullptr;
      for (int64_t b = 0; b < batch; ++b) {
        const float* zb = &zh[b * n];
        const float* gb = gx_s + b * n;
        for (int64_t u = 0; u < nu; u += kLanes) {
          const int64_t j = lo + u, row = b * hid + j;
          const int64_t m = std::min<int64_t>(kLanes, nu - u);
          auto put = [m](float* dst, vf v) { store_n(dst, v, m); };
          const vf hp = load_n(h_prev + row, m);
          const vf r = vsigmoid(load(gb + u) + load(zb + u));
          const vf z = vsigmoid(load(gb + np + u) + load(zb + np + u));
          const vf zn = load(zb + 2 * np + u);
          const vf nn = vtanh(load(gb + 2 * np + u) + r * zn);
          if (save) {
            put(rzn_out + b * gates + j, r);
            put(rzn_out + b * gates + hid + j, z);
            put(rzn_out + b * gates + 2 * hid + j, nn);
            put(zn_out + row, zn);
          }
          put(h_out + row, t < len[b] ? nn + z * (hp - nn) : hp);
        }
      }
      if (s + 1 < steps) input_part(s + 1, gxb[(s + 1) & 1].data());
      if (threads > 1) barrier.wait();  // step s + 1 reads all of h_s
    }
  });
  return ffi::Error::Success();
}

ffi::Error GruBackward(ffi::Buffer<ffi::F32> dhs, ffi::Buffer<ffi::F32> rzns,
                       ffi::Buffer<ffi::F32> zns,
                       ffi::Buffer<ffi::F32> hs, ffi::Buffer<ffi::F32> h_first,
                       ffi::Buffer<ffi::F32> w_h,
                       ffi::Buffer<ffi::F32> dh_last, ffi::Buffer<ffi::S32> t0_buf,
                       ffi::Buffer<ffi::S32> lengths, ffi::Buffer<ffi::F32> xs,
                       int64_t requested_threads, bool weights,
                       ffi::ResultBuffer<ffi::F32> dgx, ffi::ResultBuffer<ffi::F32> dh0,
                       ffi::ResultBuffer<ffi::F32> dwx_out, ffi::ResultBuffer<ffi::F32> dbx_out,
                       ffi::ResultBuffer<ffi::F32> dwh_out, ffi::ResultBuffer<ffi::F32> dbh_out) {
  const auto dims = dhs.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("dhs must be [K, B, H]");
  const int64_t steps = dims[0], batch = dims[1], hid = dims[2], gates = 3 * hid;
  const bool proj = xs.element_count() != 0;
  const int64_t in = proj ? xs.dimensions()[2] : 0;
  const int64_t hin = weights ? hid : 0;
  const int32_t t0 = t0_buf.typed_data()[0];
  const int32_t* len = lengths.typed_data();
  const float* w = w_h.typed_data();
  float* dh = dh0->typed_data();  // the running carry cotangent, in place: own units only
  std::memcpy(dh, dh_last.typed_data(), batch * hid * sizeof(float));
  // [dpre_r, dpre_u, dpre_n * r], the matmul's input, twice: step s writes dz[s % 2] while
  // another thread may still read the other (one barrier per step suffices)
  std::vector<float> dz_buf(2 * batch * gates);
  const int requested = threads_for(requested_threads, hid);
  Barrier barrier(requested);

  run_parallel(requested, [&](int p, int threads) {
    int64_t lo, hi;
    unit_range(hid, p, threads, &lo, &hi);
    const int64_t nu = hi - lo, np = round_up(nu, kLanes);
    const int64_t n3 = 3 * np;
    thread_local std::vector<float> packed, acc, dh_own;
    packed.assign(gates * np, 0.0f);  // packed[g, u] = w_h[lo + u, g]
    acc.resize(batch * np);
    dh_own.resize(batch * np);
    pack_rows_transposed(packed.data(), w, gates, lo, nu, np);
    // dW_x += x_t^T dgx_t, db_x += sum_b dgx_t; dW_h += h_{t-1}^T dz_t, db_h += sum_b dz_t
    thread_local BlockSums sx, sh;
    sx.init(in, n3, batch, true);
    sh.init(hin, n3, batch, true);
    for (int64_t s = steps - 1; s >= 0; --s) {
      const int64_t t = t0 + s;
      const float* rzn_s = rzns.typed_data() + s * batch * gates;  // dgx_s's place, maybe
      const float* zn_s = zns.typed_data() + s * batch * hid;
      const float* hp_s = carry_before(hs, h_first, s);
      const float* dh_s = dhs.typed_data() + s * batch * hid;
      float* dgx_s = dgx->typed_data() + s * batch * gates;
      float* dz = dz_buf.data() + (s % 2) * batch * gates;
      float* dgk_s = sx.step_dp();
      float* dzk_s = sh.step_dp();
      for (int64_t b = 0; b < batch; ++b) {
        const bool live = t < len[b];
        for (int64_t u = 0; u < nu; u += kLanes) {
          const int64_t j = lo + u, row = b * hid + j;
          const int64_t m = std::min<int64_t>(kLanes, nu - u);
          auto get = [m](const float* src) { return load_n(src, m); };
          auto put = [m](float* dst, vf v) { store_n(dst, v, m); };
          if (!live) {  // the carry passes through; no gate gradient
            for (int q = 0; q < 3; ++q) {
              std::memset(dgx_s + b * gates + q * hid + j, 0, m * sizeof(float));
              std::memset(&dz[b * gates + q * hid + j], 0, m * sizeof(float));
              if (dgk_s) store(&dgk_s[b * n3 + q * np + u], vf{});
              if (dzk_s) store(&dzk_s[b * n3 + q * np + u], vf{});
            }
            continue;
          }
          // all of this unit's residuals are read before dgx_s (maybe rzn_s) is written
          const vf r = get(rzn_s + b * gates + j), z = get(rzn_s + b * gates + hid + j);
          const vf nn = get(rzn_s + b * gates + 2 * hid + j);
          const vf zn = get(zn_s + row), hp = get(hp_s + row);
          const vf dhv = get(dh + row) + get(dh_s + row);
          const vf dn = dhv * (1.0f - z) * (1.0f - nn * nn);
          const vf du = dhv * (hp - nn) * z * (1.0f - z);
          const vf dr = dn * zn * r * (1.0f - r);
          put(dgx_s + b * gates + j, dr);
          put(dgx_s + b * gates + hid + j, du);
          put(dgx_s + b * gates + 2 * hid + j, dn);
          put(&dz[b * gates + j], dr);
          put(&dz[b * gates + hid + j], du);
          put(&dz[b * gates + 2 * hid + j], dn * r);
          put(&dh_own[b * np + u], dhv * z);
          if (dgk_s) {  // lanes past m hold 0 (dhv is 0 there)
            store(&dgk_s[b * n3 + u], dr);
            store(&dgk_s[b * n3 + np + u], du);
            store(&dgk_s[b * n3 + 2 * np + u], dn);
          }
          if (dzk_s) {
            store(&dzk_s[b * n3 + u], dr);
            store(&dzk_s[b * n3 + np + u], du);
            store(&dzk_s[b * n3 + 2 * np + u], dn * r);
          }
        }
      }
      if (threads > 1) barrier.wait();  // the matmul reads every unit's dz
      if (nu) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        gemm_acc(dz, gates, packed.data(), np, acc.data(), np, batch, gates);
        for (int64_t b = 0; b < batch; ++b)
          if (t < len[b])
            for (int64_t u = 0; u < nu; ++u)
              dh[b * hid + lo + u] = dh_own[b * np + u] + acc[b * np + u];
      }
      if (nu) {
        if (sx.on()) {
          sx.put_inputs(xs.typed_data() + s * batch * in, in, 0);
          sx.end_step(s == 0);
        }
        if (sh.on()) {
          sh.put_inputs(hp_s, hid, 0);
          sh.end_step(s == 0);
        }
      }
    }
    if (sx.on()) {
      sx.write_rows(dwx_out->typed_data(), 0, in, 3, hid, lo, nu, np);
      sx.write_bias(dbx_out->typed_data(), 3, hid, lo, nu, np);
    }
    if (sh.on()) {
      sh.write_rows(dwh_out->typed_data(), 0, hid, 3, hid, lo, nu, np);
      sh.write_bias(dbh_out->typed_data(), 3, hid, lo, nu, np);
    }
  });
  return ffi::Error::Success();
}
}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SeqjaxLstmForward, LstmForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0
                                  .Arg<ffi::Buffer<ffi::S32>>()  // t0
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths
                                  .Attr<int64_t>("threads")
                                  .Ret<ffi::Buffer<ffi::F32>>()  // hs
                                  .Ret<ffi::Buffer<ffi::F32>>()  // cs
                                  .Ret<ffi::Buffer<ffi::F32>>()  // acts
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(SeqjaxLstmBackward, LstmBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dhs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // acts
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c_first
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dc
                                  .Arg<ffi::Buffer<ffi::S32>>()  // t0
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xs (or empty)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // hs (or empty)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h_first (or empty)
                                  .Attr<int64_t>("threads")
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dgx
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dh0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dc0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dW_x (or empty)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // db (or empty)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dW_h (or empty)
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(SeqjaxGruForward, GruForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b_x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b_h
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::S32>>()  // t0
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths
                                  .Attr<int64_t>("threads")
                                  .Ret<ffi::Buffer<ffi::F32>>()  // hs
                                  .Ret<ffi::Buffer<ffi::F32>>()  // rzn
                                  .Ret<ffi::Buffer<ffi::F32>>()  // zn
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(SeqjaxGruBackward, GruBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dhs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // rzn
                                  .Arg<ffi::Buffer<ffi::F32>>()  // zn
                                  .Arg<ffi::Buffer<ffi::F32>>()  // hs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h_first
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dh
                                  .Arg<ffi::Buffer<ffi::S32>>()  // t0
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xs (or empty)
                                  .Attr<int64_t>("threads")
                                  .Attr<bool>("weights")
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dgx
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dh0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dW_x (or empty)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // db_x (or empty)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dW_h (or empty)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // db_h (or empty)
);
