// Compiled once to build the shared precompiled header (cmake/dsrl_pch.h); it defines nothing.
