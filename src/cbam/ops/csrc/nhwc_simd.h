// The register blocks for this build's ISA: AVX-512 (nhwc_avx512.h, plus elementwise_avx2.h's passes
// for half where F16C is there), AVX2 + FMA + F16C (nhwc_avx2.h and the element-wise passes of
// elementwise_avx2.h), or neither (nhwc_avx512.h's stubs: kNhwc16 and kVecElementwise are false and the
// generic loops run).
#pragma once
#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include "nhwc_avx2.h"
#include "elementwise_avx2.h"
#else
#if defined(__AVX512F__) && defined(__F16C__)
#define CBAM_VEC_ELEMENTWISE 1
#include "elementwise_avx2.h"
#endif
#include "nhwc_avx512.h"
#endif
