// ONESTAGE_HD marks functions compiled for both the CPU loops and the CUDA kernels.
#pragma once

#ifdef __CUDACC__
#define ONESTAGE_HD __host__ __device__
#else
#define ONESTAGE_HD
#endif
