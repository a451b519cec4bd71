# Helpers that give every dsrl target the same flags, one shared precompiled header and an explicit list of
# dependencies. See docs/architecture.md ("Build").

# --- Flags shared by every dsrl target (an INTERFACE target, never global CMAKE_CXX_FLAGS edits) -------------
add_library(dsrl_build_flags INTERFACE)
target_compile_options(dsrl_build_flags INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Wno-maybe-uninitialized -Winvalid-pch>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${DSRL_WERROR}>>:-Werror>
  $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo --expt-relaxed-constexpr -Xptxas=-warn-spills -Xcompiler=-fPIC>
  $<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<BOOL:${DSRL_WERROR}>>:-Werror=all-warnings>)
# OMPI_SKIP_MPICXX: use the MPI C API only (Open MPI's deprecated C++ bindings need libmpi_cxx).
target_compile_definitions(dsrl_build_flags INTERFACE $<$<BOOL:${DSRL_CUDA_ENABLED}>:DSRL_WITH_CUDA=1> OMPI_SKIP_MPICXX=1 MPICH_SKIP_MPICXX=1)
target_include_directories(dsrl_build_flags INTERFACE ${CMAKE_SOURCE_DIR})
# The PyPI libtorch.so exports its own copies of some std::filesystem functions (built against an older
# libstdc++); found first, they crash (e.g. remove_all). Making libstdc++ the first DT_NEEDED entry lets the
# system library win symbol resolution. Note [libstdc++ first] in docs/architecture.md.
target_link_options(dsrl_build_flags INTERFACE "SHELL:-Wl,--push-state,--no-as-needed -lstdc++ -Wl,--pop-state")
if(DSRL_SANITIZE)
  target_compile_options(dsrl_build_flags INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined -fno-omit-frame-pointer>)
  target_link_options(dsrl_build_flags INTERFACE -fsanitize=address,undefined)
endif()
if(DSRL_FUZZ)
  # libFuzzer's coverage instrumentation plus ASan + UBSan in every dsrl library; a UBSan report aborts (so the
  # fuzzer keeps the input) instead of printing and going on. Harnesses link -fsanitize=fuzzer (tests/fuzz).
  # LibTorch itself stays uninstrumented. The GCC-only warning flags above are unknown to clang: not a warning.
  target_compile_options(dsrl_build_flags INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=undefined
                              -fno-omit-frame-pointer -gline-tables-only -Wno-unknown-warning-option
                              -Xclang -fno-pch-timestamp>)
  target_link_options(dsrl_build_flags INTERFACE -fsanitize=address,undefined)
endif()

# Everything a dsrl library links: LibTorch, Abseil strings/containers, MPI.
add_library(dsrl_base_deps INTERFACE)
target_link_libraries(dsrl_base_deps INTERFACE
  dsrl_build_flags ${TORCH_LIBRARIES} absl::strings absl::str_format absl::flat_hash_map absl::synchronization
  MPI::MPI_C)

# --- One precompiled header, reused by every C++ target ---------------------------------------------------------
# GCC refuses a .gch built with -fPIC in a -fPIE compilation, so executables compile as -fPIC too (still
# linked as PIE): one PCH then serves libraries, binaries and tests.
set(CMAKE_CXX_COMPILE_OPTIONS_PIE ${CMAKE_CXX_COMPILE_OPTIONS_PIC})
# The reusing targets must compile with the same flags as this one: they all link dsrl_base_deps.
add_library(dsrl_pch OBJECT ${CMAKE_SOURCE_DIR}/cmake/pch_anchor.cpp)
target_link_libraries(dsrl_pch PUBLIC dsrl_base_deps)
target_precompile_headers(dsrl_pch PRIVATE ${CMAKE_SOURCE_DIR}/cmake/dsrl_pch.h)

function(_dsrl_use_pch target)
  target_precompile_headers(${target} REUSE_FROM dsrl_pch)
  get_target_property(_srcs ${target} SOURCES)
  foreach(_s IN LISTS _srcs)
    if(_s MATCHES "\\.cu$")
      set_source_files_properties(${_s} TARGET_DIRECTORY ${target} PROPERTIES SKIP_PRECOMPILE_HEADERS ON)
    endif()
  endforeach()
endfunction()

# dsrl_add_library(<folder> SRCS ... [CUDA_SRCS ...] [DEPS ...])
#   Creates dsrl_<folder> (alias dsrl::<folder>). CUDA_SRCS are compiled only when CUDA is enabled; the C++
#   code sees DSRL_WITH_CUDA=1 then. DEPS are linked PUBLIC, so the DAG is explicit.
function(dsrl_add_library folder)
  cmake_parse_arguments(ARG "" "" "SRCS;CUDA_SRCS;DEPS" ${ARGN})
  set(target dsrl_${folder})
  set(srcs ${ARG_SRCS})
  if(DSRL_CUDA_ENABLED)
    list(APPEND srcs ${ARG_CUDA_SRCS})
  endif()
  add_library(${target} STATIC ${srcs})
  add_library(dsrl::${folder} ALIAS ${target})
  target_link_libraries(${target} PUBLIC dsrl_base_deps ${ARG_DEPS})
  if(DSRL_CUDA_ENABLED AND ARG_CUDA_SRCS)
    set_target_properties(${target} PROPERTIES CUDA_SEPARABLE_COMPILATION OFF CUDA_ARCHITECTURES "${DSRL_CUDA_ARCHS}")
    target_link_libraries(${target} PUBLIC CUDA::cudart)
  endif()
  _dsrl_use_pch(${target})
  # Record the direct dsrl dependencies for the architecture test (docs/architecture.md must draw the same DAG).
  set(_dsrl_deps "")
  foreach(_d IN LISTS ARG_DEPS)
    if(_d MATCHES "^dsrl::(.+)$")
      list(APPEND _dsrl_deps ${CMAKE_MATCH_1})
    endif()
  endforeach()
  list(JOIN _dsrl_deps "," _dsrl_deps)
  set_property(GLOBAL APPEND PROPERTY DSRL_LIBRARY_DAG "${folder}:${_dsrl_deps}")
endfunction()

# dsrl_write_library_dag(<file>): one line "<library>:<dep>,<dep>" per dsrl library (call after all of them).
function(dsrl_write_library_dag file)
  get_property(_dag GLOBAL PROPERTY DSRL_LIBRARY_DAG)
  list(JOIN _dag "\n" _text)
  file(WRITE ${file} "${_text}\n")
endfunction()

# dsrl_add_executable(<name> SRCS ... DEPS ...): a binary in build/bin.
function(dsrl_add_executable name)
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  target_link_libraries(${name} PRIVATE dsrl_base_deps ${ARG_DEPS})
  _dsrl_use_pch(${name})
endfunction()

# dsrl_add_test(<name> SRCS ... DEPS ... [MAIN gtest|mpi] [MPI_NP n1 n2 ...] [LABEL cpu|gpu])
#   One GoogleTest executable per library (plus one `gpu` executable per library with CUDA code). With MAIN
#   gtest (default) every test is discovered by CTest and labelled LABEL (default `cpu`); `gpu` tests skip
#   with a printed reason when no GPU is visible. With MAIN mpi the executable uses tests/mpi_gtest_main.cpp
#   and runs under `mpirun --oversubscribe -np N` for each N in MPI_NP, labelled `mpi`.
function(dsrl_add_test name)
  cmake_parse_arguments(ARG "" "MAIN;LABEL" "SRCS;DEPS;MPI_NP" ${ARGN})
  if(NOT ARG_MAIN)
    set(ARG_MAIN gtest)
  endif()
  if(NOT ARG_LABEL)
    set(ARG_LABEL cpu)
  endif()
  add_executable(${name} ${ARG_SRCS} ${CMAKE_SOURCE_DIR}/tests/test_util.cpp)
  target_link_libraries(${name} PRIVATE dsrl_base_deps ${ARG_DEPS} GTest::gtest GTest::gmock)
  _dsrl_use_pch(${name})
  if(ARG_MAIN STREQUAL "gtest")
    target_link_libraries(${name} PRIVATE GTest::gtest_main)
    gtest_discover_tests(${name}
      DISCOVERY_MODE PRE_TEST
      # Listing the tests loads LibTorch: 1.2 s with warm page cache, 4.3 s cold on this machine, and past
      # CMake's default 5 s on a fresh CI machine, where the timeout aborted the whole ctest run. Generous:
      # a hang in discovery still fails, just later.
      DISCOVERY_TIMEOUT 180
      # Paths reach tests through the environment, not -D defines: absolute paths in compile flags would
      # keep a fresh clone from hitting ccache.
      PROPERTIES LABELS ${ARG_LABEL} ENVIRONMENT "DSRL_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
  elseif(ARG_MAIN STREQUAL "mpi")
    target_sources(${name} PRIVATE ${CMAKE_SOURCE_DIR}/tests/mpi_gtest_main.cpp)
    # Labelled `mpi`, plus LABEL when it is not the default (e.g. `gpu` for NCCL tests).
    set(_mpi_labels mpi)
    if(NOT ARG_LABEL STREQUAL "cpu")
      list(APPEND _mpi_labels ${ARG_LABEL})
    endif()
    foreach(np IN LISTS ARG_MPI_NP)
      add_test(NAME ${name}.np${np}
               COMMAND ${MPIEXEC_EXECUTABLE} --oversubscribe ${MPIEXEC_NUMPROC_FLAG} ${np} $<TARGET_FILE:${name}>)
      set_tests_properties(${name}.np${np} PROPERTIES
        LABELS "${_mpi_labels}" PROCESSORS ${np} TIMEOUT 300
        ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMP_NUM_THREADS=1;DSRL_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
    endforeach()
  else()
    message(FATAL_ERROR "dsrl_add_test(${name}): MAIN must be gtest or mpi, got '${ARG_MAIN}'")
  endif()
endfunction()
