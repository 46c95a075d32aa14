// Fused CPU kernels for the SCAE template warp: bilinear resampling with the
// semantics of TF1's tf.contrib.resampler, and its gradient.
//
// Why a kernel: SCAE warps batch x templates (2400 for MNIST) 11x11 templates
// onto a 40x40 canvas, 3.84M sample points per step. As TF ops the gradient
// w.r.t. the templates must materialise one update per point and corner
// (123 MB at MNIST sizes) and scatter-add it: that backward pass costs almost
// as much as the part CNN's forward and backward together (41 vs 49 ms,
// run/bench_resampler.py). Here each point adds its four updates straight
// into a small per-warp buffer (14 ms).
//
// The arithmetic is the contrib CPU kernel's, expression by expression (it is
// built with -ffp-contract=off, so no multiply-add is fused), which makes the
// forward pass and the gradient w.r.t. the warp bit-identical to it. The
// gradient w.r.t. the data is accumulated per warp row in point order, as the
// contrib kernel does for each of its (tiled) images, and the rows that share
// an image are then summed in row order: deterministic, whatever the threads.
//
// Shapes: data [N, H, W, C]; warp [M, P, 2] with M a multiple of N; warp row m
// samples image m % N (SCAE's templates are shared by every example).

#include <cmath>
#include <functional>
#include <type_traits>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace scae {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::errors::InvalidArgument;
using ::tensorflow::int64;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("ScaeResample")
    .Input("data: T")
    .Input("warp: T")
    .Output("output: T")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle data, warp;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &data));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &warp));
      c->set_output(0, c->MakeShape({c->Dim(warp, 0), c->Dim(warp, 1),
                                     c->Dim(data, 3)}));
      return Status();
    });

REGISTER_OP("ScaeResampleGrad")
    .Input("data: T")
    .Input("warp: T")
    .Input("grad_output: T")
    .Output("grad_data: T")
    .Output("grad_warp: T")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(1));
      return Status();
    });

namespace {

// Validated sizes of one call.
struct Dims {
  int64 n_data, h, w, c, n_warp, n_points;
  // The zero-padded image: one extra row and column on every side, so that
  // the four neighbours of any sampled point are inside it.
  int64 ph() const { return h + 2; }
  int64 pw() const { return w + 2; }
  int64 padded_size() const { return ph() * pw() * c; }
};

Status GetDims(const Tensor& data, const Tensor& warp, Dims* d) {
  if (data.dims() != 4) {
    return InvalidArgument("data must be [N, H, W, C], got shape ",
                           data.shape().DebugString());
  }
  if (warp.dims() != 3 || warp.dim_size(2) != 2) {
    return InvalidArgument("warp must be [M, P, 2], got shape ",
                           warp.shape().DebugString());
  }
  d->n_data = data.dim_size(0);
  d->h = data.dim_size(1);
  d->w = data.dim_size(2);
  d->c = data.dim_size(3);
  d->n_warp = warp.dim_size(0);
  d->n_points = warp.dim_size(1);
  if (d->n_data == 0 || d->n_warp % d->n_data != 0) {
    return InvalidArgument("the warp batch (", d->n_warp,
                           ") must be a multiple of the data batch (",
                           d->n_data, ")");
  }
  return Status();
}

// The contrib kernel's per-point quantities. Returns false for points that
// sample nothing (x <= -1, y <= -1, x >= W, y >= H, or NaN). `corner` is the
// offset of the (fy, fx) neighbour in the padded image.
template <typename T>
inline bool Cell(const T* xy, const Dims& d, int64* corner, T* dx, T* dy) {
  const T x = xy[0], y = xy[1];
  if (!(x > T(-1) && y > T(-1) && x < T(d.w) && y < T(d.h))) return false;
  // floor() without a libm call (x86-64's baseline has no rounding
  // instruction); exact here, as -1 < x < W.
  int fx = static_cast<int>(x), fy = static_cast<int>(y);
  fx -= x < static_cast<T>(fx);
  fy -= y < static_cast<T>(fy);
  *dx = static_cast<T>(fx + 1) - x;
  *dy = static_cast<T>(fy + 1) - y;
  *corner = ((fy + 1) * d.pw() + (fx + 1)) * d.c;
  return true;
}

template <typename T>
void PadImages(const T* data, const Dims& d, T* padded) {
  for (int64 i = 0; i < d.n_data * d.padded_size(); ++i) padded[i] = T(0);
  for (int64 n = 0; n < d.n_data; ++n) {
    for (int64 r = 0; r < d.h; ++r) {
      const T* src = data + (n * d.h + r) * d.w * d.c;
      T* dst = padded + n * d.padded_size() + ((r + 1) * d.pw() + 1) * d.c;
      for (int64 i = 0; i < d.w * d.c; ++i) dst[i] = src[i];
    }
  }
}

// Validates inputs 0 (data) and 1 (warp), and makes the zero-padded copy of
// the images.
template <typename T>
Status Prepare(OpKernelContext* ctx, Dims* d, Tensor* padded_t) {
  TF_RETURN_IF_ERROR(GetDims(ctx->input(0), ctx->input(1), d));
  TF_RETURN_IF_ERROR(ctx->allocate_temp(
      ::tensorflow::DataTypeToEnum<T>::value,
      TensorShape({d->n_data, d->padded_size()}), padded_t));
  PadImages(ctx->input(0).flat<T>().data(), *d, padded_t->flat<T>().data());
  return Status();
}

// Calls f(std::integral_constant<int, C>) with C = the channel count where it
// is 1 or 2 (SCAE's cases, unrolled by the compiler), else C = 0 (any).
template <typename F>
void WithChannels(int64 c, F f) {
  if (c == 1) {
    f(std::integral_constant<int, 1>());
  } else if (c == 2) {
    f(std::integral_constant<int, 2>());
  } else {
    f(std::integral_constant<int, 0>());
  }
}

// Sharding cost of one warp row, in the units Shard expects (~ns).
int64 RowCost(const Dims& d) { return d.n_points * (4 + 2 * d.c); }

template <typename T>
void Shard(OpKernelContext* ctx, int64 total, int64 cost,
           const std::function<void(int64, int64)>& work) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(workers->num_threads, workers->workers, total, cost,
                      work);
}

// Forward for one warp row; C is the channel count when known at compile
// time (1 or 2 in SCAE), 0 otherwise.
template <typename T, int C>
void SampleRow(const T* img, const T* warp, const Dims& d, T* out) {
  const int64 c = C ? C : d.c;
  const int64 down = d.pw() * c;
  for (int64 p = 0; p < d.n_points; ++p, out += c) {
    int64 corner;
    T dx, dy;
    if (!Cell(warp + 2 * p, d, &corner, &dx, &dy)) {
      for (int64 ch = 0; ch < c; ++ch) out[ch] = T(0);
      continue;
    }
    const T* ff = img + corner;
    for (int64 ch = 0; ch < c; ++ch) {
      const T fxfy = dx * dy * ff[ch];
      const T cxcy = (T(1) - dx) * (T(1) - dy) * ff[down + c + ch];
      const T fxcy = dx * (T(1) - dy) * ff[down + ch];
      const T cxfy = (T(1) - dx) * dy * ff[c + ch];
      out[ch] = fxfy + cxcy + fxcy + cxfy;
    }
  }
}

// Backward for one warp row: d warp, and d data added into `gimg` (padded).
template <typename T, int C>
void SampleGradRow(const T* img, const T* warp, const T* grad, const Dims& d,
                   T* gimg, T* gwarp) {
  const int64 c = C ? C : d.c;
  const int64 down = d.pw() * c;
  for (int64 p = 0; p < d.n_points; ++p, grad += c) {
    T* gxy = gwarp + 2 * p;
    int64 corner;
    T dx, dy;
    if (!Cell(warp + 2 * p, d, &corner, &dx, &dy)) {
      gxy[0] = gxy[1] = T(0);
      continue;
    }
    const T* ff = img + corner;
    T* gff = gimg + corner;
    T gx = T(0), gy = T(0);
    for (int64 ch = 0; ch < c; ++ch) {
      const T go = grad[ch];
      const T fxfy = ff[ch], cxcy = ff[down + c + ch];
      const T fxcy = ff[down + ch], cxfy = ff[c + ch];
      gx += go * ((T(1) - dy) * (cxcy - fxcy) + dy * (cxfy - fxfy));
      gy += go * ((T(1) - dx) * (cxcy - cxfy) + dx * (fxcy - fxfy));
      gff[ch] += go * dx * dy;
      gff[down + c + ch] += go * (T(1) - dx) * (T(1) - dy);
      gff[down + ch] += go * dx * (T(1) - dy);
      gff[c + ch] += go * (T(1) - dx) * dy;
    }
    gxy[0] = gx;
    gxy[1] = gy;
  }
}

// Both ops: validate data and warp, pad the images, then run `Op`.
template <typename T, void (*Op)(OpKernelContext*, const Dims&, const T*)>
class ResamplerKernel : public OpKernel {
 public:
  explicit ResamplerKernel(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    Dims d;
    Tensor padded_t;
    OP_REQUIRES_OK(ctx, Prepare<T>(ctx, &d, &padded_t));
    Op(ctx, d, padded_t.flat<T>().data());
  }
};

// ScaeResample: output [M, P, C].
template <typename T>
void Resample(OpKernelContext* ctx, const Dims& d, const T* padded) {
  Tensor* out_t = nullptr;
  OP_REQUIRES_OK(ctx, ctx->allocate_output(
                          0, TensorShape({d.n_warp, d.n_points, d.c}),
                          &out_t));
  const T* warp = ctx->input(1).flat<T>().data();
  T* out = out_t->flat<T>().data();
  Shard<T>(ctx, d.n_warp, RowCost(d), [&](int64 begin, int64 end) {
    WithChannels(d.c, [&](auto channels) {
      for (int64 m = begin; m < end; ++m) {
        SampleRow<T, decltype(channels)::value>(
            padded + (m % d.n_data) * d.padded_size(),
            warp + m * d.n_points * 2, d, out + m * d.n_points * d.c);
      }
    });
  });
}

// ScaeResampleGrad: grad_data [N, H, W, C] and grad_warp [M, P, 2].
template <typename T>
void ResampleGrad(OpKernelContext* ctx, const Dims& d, const T* padded) {
  const Tensor& grad_t = ctx->input(2);
  OP_REQUIRES(ctx,
              grad_t.dims() == 3 && grad_t.dim_size(0) == d.n_warp &&
                  grad_t.dim_size(1) == d.n_points &&
                  grad_t.dim_size(2) == d.c,
              InvalidArgument("grad_output must be [M, P, C] = [", d.n_warp,
                              ", ", d.n_points, ", ", d.c, "], got shape ",
                              grad_t.shape().DebugString()));
  Tensor* grad_data_t = nullptr;
  Tensor* grad_warp_t = nullptr;
  OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ctx->input(0).shape(),
                                           &grad_data_t));
  OP_REQUIRES_OK(ctx, ctx->allocate_output(1, ctx->input(1).shape(),
                                           &grad_warp_t));
  // One padded gradient image per warp row (the contrib kernel's tiled
  // data): rows can run on any thread and still be summed in a fixed order.
  Tensor per_row_t;
  OP_REQUIRES_OK(ctx, ctx->allocate_temp(
                          ::tensorflow::DataTypeToEnum<T>::value,
                          TensorShape({d.n_warp, d.padded_size()}),
                          &per_row_t));
  T* per_row = per_row_t.flat<T>().data();
  const T* warp = ctx->input(1).flat<T>().data();
  const T* grad = grad_t.flat<T>().data();
  T* grad_warp = grad_warp_t->flat<T>().data();

  Shard<T>(ctx, d.n_warp, 2 * RowCost(d), [&](int64 begin, int64 end) {
    WithChannels(d.c, [&](auto channels) {
      for (int64 m = begin; m < end; ++m) {
        T* gimg = per_row + m * d.padded_size();
        for (int64 i = 0; i < d.padded_size(); ++i) gimg[i] = T(0);
        SampleGradRow<T, decltype(channels)::value>(
            padded + (m % d.n_data) * d.padded_size(),
            warp + m * d.n_points * 2, grad + m * d.n_points * d.c, d, gimg,
            grad_warp + m * d.n_points * 2);
      }
    });
  });

  // grad_data[n] = the interior of sum over r of per_row[r * N + n], with
  // r ascending. The padding collected the updates of neighbours outside
  // the image, which the contrib kernel drops.
  T* grad_data = grad_data_t->flat<T>().data();
  const int64 repeats = d.n_warp / d.n_data;
  Shard<T>(ctx, d.n_data, repeats * d.padded_size(),
           [&](int64 begin, int64 end) {
    std::vector<T> sum(d.padded_size());
    for (int64 n = begin; n < end; ++n) {
      const T* first = per_row + n * d.padded_size();
      for (int64 i = 0; i < d.padded_size(); ++i) sum[i] = first[i];
      for (int64 r = 1; r < repeats; ++r) {
        const T* src = per_row + (r * d.n_data + n) * d.padded_size();
        for (int64 i = 0; i < d.padded_size(); ++i) sum[i] += src[i];
      }
      for (int64 row = 0; row < d.h; ++row) {
        const T* src = sum.data() + ((row + 1) * d.pw() + 1) * d.c;
        T* dst = grad_data + (n * d.h + row) * d.w * d.c;
        for (int64 i = 0; i < d.w * d.c; ++i) dst[i] = src[i];
      }
    }
  });
}

// (Parenthesised: the template arguments' comma would split the macro's.)
#define REGISTER(T)                                                       \
  REGISTER_KERNEL_BUILDER(                                                \
      Name("ScaeResample").Device(DEVICE_CPU).TypeConstraint<T>("T"),     \
      (ResamplerKernel<T, Resample<T>>));                                 \
  REGISTER_KERNEL_BUILDER(                                                \
      Name("ScaeResampleGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
      (ResamplerKernel<T, ResampleGrad<T>>));
REGISTER(float);
REGISTER(double);
#undef REGISTER

}  // namespace
}  // namespace scae
