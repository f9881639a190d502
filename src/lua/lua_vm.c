/* lua_vm.c: the Lua state of one event loop and what keeps a hook from running away.
 *
 * Owns: the allocator with its memory cap, the count hook that enforces the instruction budget
 * and the time limit (hook_time_limit_ms, checked every BUDGET_CHECK_EVERY instructions, as
 * HAProxy checks its Lua timeout), and the protected calls with their error messages.
 * Must not: load scripts (hooks_load.c), know what a hook or a request is (hooks.c,
 * lua_req.c), or let a Lua error escape a protected call: outside one, an allocation failure
 * (the memory cap) would panic and abort the process. */
#include "hooks_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "route/config.h"
#include "route/util.h"

/* Rare enough to cost nothing (a vDSO clock read per thousand instructions), often enough
 * that overshooting a budget does not matter. */
#define BUDGET_CHECK_EVERY 1000

/* Growth beyond the cap fails, and Lua turns that into a "not enough memory" error after an
 * emergency collection; shrinking and freeing always succeed, as Lua requires. */
static void *vm_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    hooks_t *h = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        h->mem_used -= old;
        return NULL;
    }
    if (nsize > old && h->mem_limit && h->mem_used - old + nsize > h->mem_limit) {
        /* A refusal is dear: a script that catches "not enough memory" with pcall and tries
         * again would otherwise fill and collect the whole cap thousands of times before its
         * instruction budget ran out. */
        h->used += h->budget / 8;
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (!p) return NULL;
    h->mem_used = h->mem_used - old + nsize;
    return p;
}

static hooks_t *hooks_of(lua_State *L) {
    return *(hooks_t **)lua_getextraspace(L);
}

static void count_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    hooks_t *h = hooks_of(L);
    h->used += BUDGET_CHECK_EVERY;
    int over_budget = h->used > h->budget;
    int over_time = !over_budget && h->deadline_ns && util_now_mono_ns() > h->deadline_ns;
    if (!over_budget && !over_time) return;
    /* From now on every instruction of this thread raises: a script that catches the error
     * with pcall and loops again cannot run on, since its next instruction raises anew.
     * vm_run_protected restores the normal interval before the next call. */
    lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
    if (over_time) h->used = h->budget + 1; /* stays over: the clock need not be read again */
    /* luaL_error would name the caller; the loop that ran away is the function at level 0. */
    lua_Debug d;
    if (lua_getstack(L, 0, &d) && lua_getinfo(L, "Sl", &d) && d.currentline > 0)
        lua_pushfstring(L, "%s:%d: ", d.short_src, d.currentline);
    else
        lua_pushliteral(L, "");
    if (over_time || h->deadline_ns < 0) {
        h->deadline_ns = -1; /* later raises of this call say the same */
        lua_pushfstring(L, "hook exceeded its time limit (%I ms)",
                        (lua_Integer)(h->time_limit_ms + 0.5));
    } else {
        lua_pushfstring(L, "hook exceeded its instruction budget (%I instructions)",
                        (lua_Integer)h->budget);
    }
    lua_concat(L, 2);
    lua_error(L);
}

lua_State *vm_new_state(hooks_t *h) {
    lua_State *L = lua_newstate(vm_alloc, h);
    if (!L) return NULL;
    *(hooks_t **)lua_getextraspace(L) = h;
    /* Set on the main thread; coroutines a script creates inherit it. */
    lua_sethook(L, count_hook, LUA_MASKCOUNT, BUDGET_CHECK_EVERY);
    return L;
}

static void apply_limits(hooks_t *h) {
    const route_config_t *cfg = config_current(h->ctx);
    h->budget = cfg->hook_instruction_budget;
    long long mb = cfg->hook_memory_limit_mb;
    if (mb > (long long)(SIZE_MAX >> 21)) mb = (long long)(SIZE_MAX >> 21);
    h->mem_limit = (size_t)mb << 20;
    h->used = 0;
    h->time_limit_ms = cfg->hook_time_limit_ms;
    /* Loading is not on a request's path: only the instruction budget bounds a script's top
     * level, so a slow start (a sanitizer build, a busy machine) is no load error. */
    h->deadline_ns = h->time_limit_ms > 0 && !h->loading
                         ? util_now_mono_ns() + (int64_t)(h->time_limit_ms * 1e6)
                         : 0;
    lua_sethook(h->L, count_hook, LUA_MASKCOUNT, BUDGET_CHECK_EVERY);
}

/* No traceback: the answer to a client and the log line keep "file:line: message". */
static int msgh(lua_State *L) {
    if (lua_type(L, 1) == LUA_TSTRING) return 1;
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    return 1;
}

int vm_run_protected(hooks_t *h, lua_CFunction fn, void *ud, char **err) {
    lua_State *L = h->L;
    int base = lua_gettop(L);
    apply_limits(h);
    lua_pushcfunction(L, msgh);
    lua_pushcfunction(L, fn);
    lua_pushlightuserdata(L, ud);
    int rc = lua_pcall(L, 1, 0, base + 1);
    if (rc == LUA_OK) {
        lua_settop(L, base);
        return 0;
    }
    char *msg = NULL;
    if (rc == LUA_ERRMEM) {
        char tmp[96];
        snprintf(tmp, sizeof tmp, "not enough memory (hook memory limit %zu MiB)",
                 h->mem_limit >> 20);
        msg = strdup(tmp);
    } else {
        size_t len = 0;
        const char *s = lua_tolstring(L, -1, &len);
        if (!s) {
            s = "unknown Lua error";
            len = strlen(s);
        }
        msg = lua_api_redact(&h->host, s, len);
    }
    lua_settop(L, base);
    if (rc == LUA_ERRMEM) lua_gc(L, LUA_GCCOLLECT); /* give the failed call's garbage back now */
    if (err)
        *err = msg ? msg : strdup("out of memory");
    else
        free(msg);
    return -1;
}
