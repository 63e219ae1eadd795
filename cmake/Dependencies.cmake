# Every dependency comes from Debian; a missing one names the apt package that provides it.
set(ATTNBENCH_APT_PACKAGES "libdnnl-dev ocl-icd-opencl-dev opencl-c-headers libtbb-dev nlohmann-json3-dev libfmt-dev libbenchmark-dev libgtest-dev libfftw3-dev pkg-config libspng-dev zlib1g-dev")

macro(attnbench_require pkg apt)
  find_package(${pkg} ${ARGN} QUIET)
  if(NOT ${pkg}_FOUND)
    message(FATAL_ERROR "attnbench needs ${pkg}: install it with 'apt-get install ${apt}' "
                        "(or run scripts/setup.sh, which installs: ${ATTNBENCH_APT_PACKAGES})")
  endif()
endmacro()

attnbench_require(dnnl "libdnnl-dev ocl-icd-opencl-dev opencl-c-headers" CONFIG)
attnbench_require(TBB "libtbb-dev" CONFIG)
attnbench_require(nlohmann_json "nlohmann-json3-dev" 3.10 CONFIG)
attnbench_require(fmt "libfmt-dev" CONFIG)
attnbench_require(OpenMP "g++ (libgomp)")
attnbench_require(benchmark "libbenchmark-dev" CONFIG)
attnbench_require(ZLIB "zlib1g-dev")
if(ATTNBENCH_BUILD_TESTS)
  attnbench_require(GTest "libgtest-dev" CONFIG)
endif()

# FFTW3 (single precision) for FFT convolutions and Fourier mixing; Debian ships pkg-config files only.
find_package(PkgConfig QUIET)
if(NOT PkgConfig_FOUND)
  message(FATAL_ERROR "attnbench needs pkg-config to find FFTW3: apt-get install pkg-config libfftw3-dev")
endif()
pkg_check_modules(FFTW3F QUIET IMPORTED_TARGET fftw3f)
if(NOT FFTW3F_FOUND)
  message(FATAL_ERROR "attnbench needs FFTW3 (single precision): apt-get install libfftw3-dev")
endif()

# libspng reads and writes PNGs (harness/io/png.cpp); Debian ships a pkg-config file only.
pkg_check_modules(SPNG QUIET IMPORTED_TARGET spng)
if(NOT SPNG_FOUND)
  message(FATAL_ERROR "attnbench needs libspng (PNG input and output): apt-get install libspng-dev")
endif()
