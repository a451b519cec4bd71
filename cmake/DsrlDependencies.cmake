# Third-party dependencies. LibTorch comes from the PyPI torch wheel in the Python environment that
# scripts/setup.sh prepares (.venv); everything else from Debian packages.

# --- LibTorch -------------------------------------------------------------------------------------------
if(NOT DEFINED DSRL_PYTHON)
  if(EXISTS ${CMAKE_SOURCE_DIR}/.venv/bin/python)
    set(DSRL_PYTHON ${CMAKE_SOURCE_DIR}/.venv/bin/python)
  else()
    find_program(DSRL_PYTHON NAMES python3 python REQUIRED)
  endif()
endif()
set(DSRL_PYTHON ${DSRL_PYTHON} CACHE FILEPATH "Python interpreter that has torch (and the test oracles)")
if(NOT Torch_DIR)
  execute_process(
    COMMAND ${DSRL_PYTHON} -c "import torch; print(torch.utils.cmake_prefix_path, end='')"
    OUTPUT_VARIABLE _dsrl_torch_prefix
    RESULT_VARIABLE _dsrl_torch_rc
    ERROR_QUIET)
  if(NOT _dsrl_torch_rc EQUAL 0)
    message(FATAL_ERROR "dsrl: cannot import torch with ${DSRL_PYTHON}. Run scripts/setup.sh first, "
                        "or pass -DDSRL_PYTHON=/path/to/python (with torch==2.11.0) or -DTorch_DIR=...")
  endif()
  list(APPEND CMAKE_PREFIX_PATH ${_dsrl_torch_prefix})
endif()

# Torch's CMake config probes the CUDA toolkit when the wheel was built with CUDA. Decide first whether we
# want CUDA at all, so that a machine without nvcc still configures.
include(CheckLanguage)
set(DSRL_CUDA_ENABLED OFF)
if(NOT DSRL_WITH_CUDA STREQUAL "OFF")
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(DSRL_CUDA_ENABLED ON)
  elseif(DSRL_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "dsrl: DSRL_WITH_CUDA=ON but no CUDA compiler (nvcc) was found")
  endif()
endif()
if(DSRL_CUDA_ENABLED)
  set(CMAKE_CUDA_ARCHITECTURES ${DSRL_CUDA_ARCHS})
  # CMake 3.25 (Debian 12) knows no CUDA20 flags for nvcc; kernels are C++17 (they never see torch).
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_EXTENSIONS OFF)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
endif()

# Without our CUDA (DSRL_WITH_CUDA=OFF, the fuzz build) a CUDA wheel's config still runs that probe, which fails
# without a GPU: the same list quiets it (no CUDA target is built then).
if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT TORCH_CUDA_ARCH_LIST)
  # Torch's config otherwise probes the (absent) GPU and adds flags for a dozen architectures: 90a -> 9.0a.
  set(TORCH_CUDA_ARCH_LIST "")
  foreach(_arch IN LISTS DSRL_CUDA_ARCHS)
    string(REGEX REPLACE "^([0-9]+)([0-9])([a-z]?)$" "\\1.\\2\\3" _arch "${_arch}")
    list(APPEND TORCH_CUDA_ARCH_LIST ${_arch})
  endforeach()
endif()
find_package(Torch REQUIRED)
if(DSRL_CUDA_ENABLED AND NOT TARGET torch_cuda)
  if(DSRL_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "dsrl: DSRL_WITH_CUDA=ON but this Torch has no CUDA")
  endif()
  message(STATUS "dsrl: Torch has no CUDA; building without CUDA kernels")
  set(DSRL_CUDA_ENABLED OFF)
endif()

# --- Debian packages ------------------------------------------------------------------------------------
find_package(MPI REQUIRED COMPONENTS C)
find_package(yaml-cpp REQUIRED)
find_package(absl REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
# tokenizer.json (text/): PCRE2 for the pre-tokenizers' regexes, utf8proc for Unicode normalization.
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 IMPORTED_TARGET libpcre2-8)
pkg_check_modules(UTF8PROC IMPORTED_TARGET libutf8proc)
if(NOT PCRE2_FOUND OR NOT UTF8PROC_FOUND)
  message(FATAL_ERROR "dsrl: libpcre2-dev and libutf8proc-dev are needed (tokenizer.json support); "
                      "bash scripts/setup.sh installs them")
endif()
if(DSRL_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(DSRL_CUDA_ENABLED)
  find_library(DSRL_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/lib/x86_64-linux-gnu)
  find_path(DSRL_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/include)
  if(NOT DSRL_NCCL_LIBRARY OR NOT DSRL_NCCL_INCLUDE_DIR)
    message(FATAL_ERROR "dsrl: CUDA is enabled but NCCL (nccl.h, libnccl) was not found")
  endif()
  add_library(dsrl_nccl INTERFACE)
  target_link_libraries(dsrl_nccl INTERFACE ${DSRL_NCCL_LIBRARY})
  target_include_directories(dsrl_nccl SYSTEM INTERFACE ${DSRL_NCCL_INCLUDE_DIR})
endif()
