// Host/device qualifiers for the index math shared by the CPU and CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define TGF_HD __host__ __device__ __forceinline__
#else
#define TGF_HD inline
#endif
