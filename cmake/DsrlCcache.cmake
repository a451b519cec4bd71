# ccache for C++ and CUDA, configured so that a fresh clone in another folder hits the cache:
# CCACHE_BASEDIR rewrites absolute paths under the source tree as relative ones and CCACHE_NOHASHDIR keeps
# the working directory out of the hash. The sloppiness settings let ccache cache compilations that use
# the precompiled header (GCC's .gch carries timestamps and the defines it was built with).
set(DSRL_CCACHE_PROGRAM "off")
if(DSRL_USE_CCACHE)
  find_program(DSRL_CCACHE_EXE ccache)
  if(DSRL_CCACHE_EXE)
    set(DSRL_CCACHE_PROGRAM ${DSRL_CCACHE_EXE})
    set(_dsrl_launcher
        ${CMAKE_COMMAND} -E env
        CCACHE_BASEDIR=${CMAKE_SOURCE_DIR}
        CCACHE_NOHASHDIR=1
        CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime,system_headers
        ${DSRL_CCACHE_EXE})
    set(CMAKE_CXX_COMPILER_LAUNCHER ${_dsrl_launcher})
    set(CMAKE_CUDA_COMPILER_LAUNCHER ${_dsrl_launcher})
  endif()
endif()
