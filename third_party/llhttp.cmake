# Locates llhttp without copying it: a system libllhttp known to pkg-config when there is one,
# else the C sources that Debian's node-llhttp package installs under /usr/share/llhttp.
# Defines the target route::llhttp.
find_package(PkgConfig REQUIRED)
pkg_check_modules(LLHTTP_PC QUIET IMPORTED_TARGET libllhttp)
if(LLHTTP_PC_FOUND)
  add_library(route_llhttp INTERFACE)
  target_link_libraries(route_llhttp INTERFACE PkgConfig::LLHTTP_PC)
  message(STATUS "llhttp: system library ${LLHTTP_PC_VERSION}")
else()
  find_path(LLHTTP_INCLUDE_DIR llhttp.h PATHS /usr/share/include/llhttp /usr/include/llhttp
            NO_DEFAULT_PATH)
  find_path(LLHTTP_SOURCE_DIR llhttp.c PATHS /usr/share/llhttp NO_DEFAULT_PATH)
  if(NOT LLHTTP_INCLUDE_DIR OR NOT LLHTTP_SOURCE_DIR)
    message(FATAL_ERROR "llhttp not found: install Debian's node-llhttp (third_party/bootstrap.sh)")
  endif()
  add_library(route_llhttp STATIC ${LLHTTP_SOURCE_DIR}/api.c ${LLHTTP_SOURCE_DIR}/http.c
                                  ${LLHTTP_SOURCE_DIR}/llhttp.c)
  target_include_directories(route_llhttp SYSTEM PUBLIC ${LLHTTP_INCLUDE_DIR})
  # Generated code: our warning flags are not its business.
  target_compile_options(route_llhttp PRIVATE -w)
  # Strict mode: chunk data must be followed by CRLF (the loose parser skips any two bytes,
  # a smuggling vector), control characters in header values and non-ASCII in targets are
  # errors. Both directions get it: a sloppy upstream's framing is no safer than a client's.
  target_compile_definitions(route_llhttp PRIVATE LLHTTP_STRICT_MODE=1)
  set_target_properties(route_llhttp PROPERTIES POSITION_INDEPENDENT_CODE ON)
  message(STATUS "llhttp: compiled from ${LLHTTP_SOURCE_DIR}")
endif()
add_library(route::llhttp ALIAS route_llhttp)
