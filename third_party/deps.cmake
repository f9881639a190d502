# Finds every other dependency as Debian 12 installs it (third_party/bootstrap.sh) and defines
# one imported target per library: route::uv, route::sqlite, route::lua, route::cjson,
# route::mbedtls, route::jansson.
find_package(PkgConfig REQUIRED)
pkg_check_modules(UV REQUIRED IMPORTED_TARGET libuv)
pkg_check_modules(SQLITE REQUIRED IMPORTED_TARGET sqlite3)
pkg_check_modules(LUA REQUIRED IMPORTED_TARGET lua5.4)
pkg_check_modules(JANSSON REQUIRED IMPORTED_TARGET jansson)
add_library(route::uv ALIAS PkgConfig::UV)
add_library(route::sqlite ALIAS PkgConfig::SQLITE)
add_library(route::lua ALIAS PkgConfig::LUA)
add_library(route::jansson ALIAS PkgConfig::JANSSON)

# lua-cjson: link the static archive so `require "cjson"` needs no module on disk.
pkg_check_modules(LUA_CJSON QUIET lua5.4-cjson)
find_library(LUA_CJSON_STATIC NAMES liblua5.4-cjson.a HINTS ${LUA_CJSON_LIBRARY_DIRS})
if(NOT LUA_CJSON_STATIC)
  message(FATAL_ERROR "liblua5.4-cjson.a not found: install lua-cjson-dev")
endif()
add_library(route_cjson STATIC IMPORTED)
set_target_properties(route_cjson PROPERTIES IMPORTED_LOCATION ${LUA_CJSON_STATIC})
add_library(route::cjson ALIAS route_cjson)

# mbedTLS 2.28 (Debian 12) ships neither pkg-config nor CMake files.
find_path(MBEDTLS_INCLUDE_DIR mbedtls/ssl.h)
find_library(MBEDTLS_LIB mbedtls)
find_library(MBEDX509_LIB mbedx509)
find_library(MBEDCRYPTO_LIB mbedcrypto)
if(NOT MBEDTLS_INCLUDE_DIR OR NOT MBEDTLS_LIB OR NOT MBEDX509_LIB OR NOT MBEDCRYPTO_LIB)
  message(FATAL_ERROR "mbedTLS not found: install libmbedtls-dev")
endif()
add_library(route_mbedtls INTERFACE)
target_include_directories(route_mbedtls SYSTEM INTERFACE ${MBEDTLS_INCLUDE_DIR})
target_link_libraries(route_mbedtls INTERFACE ${MBEDTLS_LIB} ${MBEDX509_LIB} ${MBEDCRYPTO_LIB})
add_library(route::mbedtls ALIAS route_mbedtls)
