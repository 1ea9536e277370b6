#include "core/data/resample.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define ONESTAGE_RESAMPLE_X86 1
#endif

namespace onestage {

namespace {

// Pillow's fixed point for 8-bit images: 32 − 8 − 2 bits, accumulators start at half a unit
constexpr int kPrecisionBits = 32 - 8 - 2;

/// The filter taps of one pass: for output pixel i the inputs first[i] … first[i] + count[i] − 1,
/// weights taps[i·size …], as Pillow's precompute_coeffs + normalize_coeffs_8bpc.
struct Taps {
  int size = 0;
  std::vector<int> first, count;
  std::vector<int32_t> taps;
};

Taps bilinearTaps(int inSize, float in0, float in1, int outSize) {
  Taps t;
  const double scale = static_cast<double>(in1 - in0) / outSize;
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;  // the triangle's support is 1
  t.size = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.first.resize(outSize);
  t.count.resize(outSize);
  t.taps.assign(static_cast<size_t>(outSize) * t.size, 0);
  std::vector<double> k(t.size);
  const double invFilterscale = 1.0 / filterscale;
  for (int xx = 0; xx < outSize; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    const int xmin = std::max(static_cast<int>(center - support + 0.5), 0);
    const int xmax = std::min(static_cast<int>(center + support + 0.5), inSize) - xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      double d = std::abs((x + xmin - center + 0.5) * invFilterscale);
      k[x] = d < 1.0 ? 1.0 - d : 0.0;
      ww += k[x];
    }
    int32_t* out = &t.taps[static_cast<size_t>(xx) * t.size];
    for (int x = 0; x < xmax; ++x) {
      const double w = ww != 0.0 ? k[x] / ww : k[x];
      out[x] = static_cast<int32_t>(w < 0 ? -0.5 + w * (1 << kPrecisionBits) : 0.5 + w * (1 << kPrecisionBits));
    }
    t.first[xx] = xmin;
    t.count[xx] = std::max(xmax, 0);
  }
  return t;
}

/// Output pixel xx's three bytes go to column xx, or outWidth − 1 − xx when mirroring.
inline int column(int xx, int outWidth, bool flip) { return flip ? outWidth - 1 - xx : xx; }

inline uint8_t clip8(int32_t v) {
  v >>= kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

/// Taps of a horizontal pass rewritten to the same count for every output pixel — the largest count,
/// zeros added before or after, the window moved left where it would pass the row's end — so the inner
/// loop has a fixed length. The sums are the same integers.
void padTaps(Taps& t, int inSize) {
  const int most = *std::max_element(t.count.begin(), t.count.end());
  if (inSize < most) return;
  std::vector<int32_t> padded(t.first.size() * most, 0);
  for (size_t i = 0; i < t.first.size(); ++i) {
    const int first = std::min(t.first[i], inSize - most);
    const int shift = t.first[i] - first;
    for (int x = 0; x < t.count[i]; ++x) padded[i * most + shift + x] = t.taps[i * t.size + x];
    t.first[i] = first;
    t.count[i] = most;
  }
  t.taps.swap(padded);
  t.size = most;
}

/// Output pixels [from, outWidth) of one row (written mirrored with `flip`).
template <int Size>
void horizontalRow(const uint8_t* row, const Taps& t, uint8_t* out, int outWidth, int from, bool flip) {
  for (int xx = from; xx < outWidth; ++xx) {
    uint8_t* q = out + 3 * column(xx, outWidth, flip);
    const int32_t* k = &t.taps[static_cast<size_t>(xx) * t.size];
    const uint8_t* p = row + static_cast<size_t>(t.first[xx]) * 3;
    const int count = Size > 0 ? Size : t.count[xx];
    int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
    for (int x = 0; x < count; ++x) {
      s0 += p[3 * x] * k[x];
      s1 += p[3 * x + 1] * k[x];
      s2 += p[3 * x + 2] * k[x];
    }
    q[0] = clip8(s0);
    q[1] = clip8(s1);
    q[2] = clip8(s2);
  }
}

#ifdef ONESTAGE_RESAMPLE_X86
// Vector kernels (x86-64, chosen at run time by the CPU's features). Same integer arithmetic as the
// scalar loops: 32-bit products and sums, an arithmetic shift, then saturation to 0…255 (clip8).

/// Whether the vector kernels run: the CPU has AVX2, and ONESTAGE_NO_AVX2 is not set to 1 (the scalar
/// loops, which other CPUs run, are then what a test can compare).
bool haveAvx2() {
  static const bool yes = [] {
    const char* off = std::getenv("ONESTAGE_NO_AVX2");
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("sse4.1") && !(off && std::string(off) == "1");
  }();
  return yes;
}

/// Two output pixels per step, each one's three channels (and a fourth byte, ignored) in four int32
/// lanes. An input pixel is read as 4 bytes, so pixels whose window reaches the row's last input pixel
/// are left to the scalar loop: returns the first of them. Each pixel is stored as 4 bytes whose spare
/// byte lands on a neighbour written later (the one to the right, or to the left when mirroring).
template <int Count>
__attribute__((target("avx2"))) int horizontalRowAvx2(const uint8_t* row, int inWidth, const Taps& t, uint8_t* o, int outWidth, bool flip) {
  const int count = Count > 0 ? Count : t.size;
  const __m256i half = _mm256_set1_epi32(1 << (kPrecisionBits - 1));
  const auto load4 = [](const uint8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
  };
  const auto store = [&](int xx, int32_t rgbx) {
    if (flip) {
      const uint32_t xrgb = static_cast<uint32_t>(rgbx) << 8;
      std::memcpy(o + 3 * column(xx, outWidth, true) - 1, &xrgb, 4);
    } else {
      std::memcpy(o + 3 * xx, &rgbx, 4);
    }
  };
  int xx = 0;
  // xx + 2 < outWidth: the spare byte of either store lands on a pixel written later
  for (; xx + 2 < outWidth && t.first[xx + 1] + count < inWidth; xx += 2) {
    const int32_t* ka = &t.taps[static_cast<size_t>(xx) * t.size];
    const int32_t* kb = ka + t.size;
    const uint8_t* pa = row + static_cast<size_t>(t.first[xx]) * 3;
    const uint8_t* pb = row + static_cast<size_t>(t.first[xx + 1]) * 3;
    __m256i acc = half;
    for (int x = 0; x < count; ++x) {
      const __m128i two = _mm_insert_epi32(_mm_cvtsi32_si128(load4(pa + 3 * x)), load4(pb + 3 * x), 1);
      const __m256i w = _mm256_set_m128i(_mm_set1_epi32(kb[x]), _mm_set1_epi32(ka[x]));
      acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(two), w));
    }
    acc = _mm256_srai_epi32(acc, kPrecisionBits);
    const __m256i packed = _mm256_packus_epi16(_mm256_packs_epi32(acc, acc), _mm256_setzero_si256());
    store(xx, _mm_cvtsi128_si32(_mm256_castsi256_si128(packed)));
    store(xx + 1, _mm_cvtsi128_si32(_mm256_extracti128_si256(packed, 1)));
  }
  return xx;
}

/// One output row: bytes [0, rowBytes) of the rows `rows[0 … count)` weighted by k, 16 bytes a step.
__attribute__((target("avx2"))) size_t verticalRowAvx2(const uint8_t* const* rows, const int32_t* k, int count, size_t rowBytes, uint8_t* o) {
  const __m256i half = _mm256_set1_epi32(1 << (kPrecisionBits - 1));
  size_t i = 0;
  for (; i + 16 <= rowBytes; i += 16) {
    __m256i a0 = half, a1 = half;
    for (int y = 0; y < count; ++y) {
      const __m256i w = _mm256_set1_epi32(k[y]);
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[y] + i));
      a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(b), w));
      a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(b, 8)), w));
    }
    a0 = _mm256_srai_epi32(a0, kPrecisionBits);
    a1 = _mm256_srai_epi32(a1, kPrecisionBits);
    // int32 → int16 (saturating) keeps 128-bit lanes apart: put the halves back in order
    const __m256i p16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(a0, a1), 0xD8);
    const __m128i p8 = _mm_packus_epi16(_mm256_castsi256_si128(p16), _mm256_extracti128_si256(p16, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + i), p8);
  }
  return i;
}
#endif

/// rows [rowBegin, rowEnd) of `in` (rows inStride bytes apart) → out (rowEnd − rowBegin rows, outWidth·3
/// bytes each), each row mirrored with `flip` (the vertical pass treats columns alike, so mirroring here
/// mirrors the result).
void horizontalPass(const uint8_t* in, int inWidth, size_t inStride, int rowBegin, int rowEnd, const Taps& t, uint8_t* out, int outWidth, bool flip) {
  const size_t outStride = static_cast<size_t>(outWidth) * 3;
  // fixed tap counts for the usual factors (up to about 3× down), the general loop beyond
  const bool fixed = t.count[0] == t.size;
  using Scalar = void (*)(const uint8_t*, const Taps&, uint8_t*, int, int, bool);
  Scalar scalar = &horizontalRow<0>;
  if (fixed && t.size >= 2 && t.size <= 7) {
    constexpr Scalar kernels[] = {&horizontalRow<2>, &horizontalRow<3>, &horizontalRow<4>, &horizontalRow<5>, &horizontalRow<6>, &horizontalRow<7>};
    scalar = kernels[t.size - 2];
  }
  using Vector = int (*)(const uint8_t*, int, const Taps&, uint8_t*, int, bool);
  Vector vector = nullptr;
#ifdef ONESTAGE_RESAMPLE_X86
  if (haveAvx2() && fixed) {
    constexpr Vector kernels[] = {&horizontalRowAvx2<2>, &horizontalRowAvx2<3>, &horizontalRowAvx2<4>, &horizontalRowAvx2<5>};
    vector = t.size >= 2 && t.size <= 5 ? kernels[t.size - 2] : &horizontalRowAvx2<0>;
  }
#endif
  for (int y = rowBegin; y < rowEnd; ++y) {
    const uint8_t* r = in + static_cast<size_t>(y) * inStride;
    uint8_t* o = out + static_cast<size_t>(y - rowBegin) * outStride;
    scalar(r, t, o, outWidth, vector ? vector(r, inWidth, t, o, outWidth, flip) : 0, flip);
  }
}

/// in: rows of rowBytes bytes, inStride apart, the taps' first rows counted from `in`'s first row → out
/// (t's output size rows of rowBytes). Accumulated a whole row at a time (the same integer sums as
/// Pillow's pixel-at-a-time loop).
void verticalPass(const uint8_t* in, size_t inStride, size_t rowBytes, const Taps& t, int outHeight, uint8_t* out, std::vector<int32_t>& acc) {
  acc.resize(rowBytes);
  std::vector<const uint8_t*> rows(t.size);
  for (int yy = 0; yy < outHeight; ++yy) {
    const int32_t* k = &t.taps[static_cast<size_t>(yy) * t.size];
    for (int y = 0; y < t.count[yy]; ++y) rows[y] = in + static_cast<size_t>(t.first[yy] + y) * inStride;
    uint8_t* o = out + static_cast<size_t>(yy) * rowBytes;
    size_t done = 0;
#ifdef ONESTAGE_RESAMPLE_X86
    if (haveAvx2()) done = verticalRowAvx2(rows.data(), k, t.count[yy], rowBytes, o);
#endif
    std::fill(acc.begin() + done, acc.end(), 1 << (kPrecisionBits - 1));
    for (int y = 0; y < t.count[yy]; ++y) {
      const int32_t w = k[y];
      for (size_t i = done; i < rowBytes; ++i) acc[i] += rows[y][i] * w;
    }
    for (size_t i = done; i < rowBytes; ++i) o[i] = clip8(acc[i]);
  }
}

void mirrorRows(uint8_t* img, int width, int height) {
  for (int y = 0; y < height; ++y) {
    uint8_t* row = img + static_cast<size_t>(y) * width * 3;
    for (int a = 0, b = width - 1; a < b; ++a, --b) std::swap_ranges(row + 3 * a, row + 3 * a + 3, row + 3 * b);
  }
}

}  // namespace

void resampleBilinear(const uint8_t* in, int inWidth, int inHeight, size_t inStride, const ResampleBox& box, uint8_t* out, int outWidth,
                      int outHeight, bool flip) {
  thread_local std::vector<uint8_t> between;  // the horizontal pass's rows
  thread_local std::vector<int32_t> acc;
  const size_t outRow = static_cast<size_t>(outWidth) * 3;
  // as Pillow: a pass runs only where the size or the window changes that axis
  const bool horizontal = outWidth != inWidth || box.x0 != 0 || box.x1 != outWidth;
  const bool vertical = outHeight != inHeight || box.y0 != 0 || box.y1 != outHeight;
  Taps rows = bilinearTaps(inHeight, box.y0, box.y1, outHeight);
  if (horizontal) {
    Taps cols = bilinearTaps(inWidth, box.x0, box.x1, outWidth);
    padTaps(cols, inWidth);
    // only the input rows the vertical pass reads
    const int first = rows.first[0];
    const int last = rows.first[outHeight - 1] + rows.count[outHeight - 1];
    if (vertical) {
      between.resize(static_cast<size_t>(last - first) * outRow);
      horizontalPass(in, inWidth, inStride, first, last, cols, between.data(), outWidth, flip);
      for (int& f : rows.first) f -= first;
      verticalPass(between.data(), outRow, outRow, rows, outHeight, out, acc);
    } else {
      horizontalPass(in, inWidth, inStride, first, last, cols, out, outWidth, flip);
    }
  } else if (vertical) {
    verticalPass(in, inStride, outRow, rows, outHeight, out, acc);
  } else {
    for (int y = 0; y < outHeight; ++y) std::memcpy(out + y * outRow, in + y * inStride, outRow);
  }
  if (flip && !horizontal) mirrorRows(out, outWidth, outHeight);
}

}  // namespace onestage
