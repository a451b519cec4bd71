/* An environment plugin in plain C for the tests (agent/plugin_api.h): a calculator that always answers "5". The
 * params choose a behaviour: {"mode": "garbage"} answers text that is not JSON, {"mode": "fail"} returns an error,
 * {"mode": "refuse"} refuses to create an instance. */
#include <stdlib.h>
#include <string.h>

#include "agent/plugin_api.h"

struct env {
    int mode; /* 0 normal, 1 garbage, 2 fail */
};

static char* dup_text(const char* s) {
    char* out = malloc(strlen(s) + 1);
    strcpy(out, s);
    return out;
}

DSRL_ENV_PLUGIN_EXPORT int dsrl_env_plugin_abi_version(void) { return DSRL_ENV_PLUGIN_ABI_VERSION; }

DSRL_ENV_PLUGIN_EXPORT const char* dsrl_env_plugin_name(void) { return "c_calculator"; }

DSRL_ENV_PLUGIN_EXPORT void* dsrl_env_create(const char* params_json, char** error) {
    if (strstr(params_json, "\"refuse\"") != NULL) {
        *error = dup_text("refused by its params");
        return NULL;
    }
    struct env* e = malloc(sizeof(struct env));
    e->mode = strstr(params_json, "\"garbage\"") != NULL ? 1 : strstr(params_json, "\"fail\"") != NULL ? 2 : 0;
    return e;
}

DSRL_ENV_PLUGIN_EXPORT char* dsrl_env_call(void* handle, const char* op, const char* request_json, char** error) {
    struct env* e = handle;
    (void)request_json;
    if (strcmp(op, "reset") == 0) {
        return dup_text("{\"messages\": [{\"role\": \"user\", \"content\": \"What is 2+3?\"}], \"tools\": []}");
    }
    if (strcmp(op, "step") == 0) {
        if (e->mode == 1) return dup_text("not json at all");
        if (e->mode == 2) {
            *error = dup_text("the C calculator failed");
            return NULL;
        }
        return dup_text("{\"results\": [{\"tool_call_id\": \"c1\", \"content\": \"5\"}], \"done\": true}");
    }
    if (strcmp(op, "verify") == 0) return dup_text("{\"reward\": 1.0, \"details\": {\"by\": \"c\"}}");
    *error = dup_text("unknown op");
    return NULL;
}

DSRL_ENV_PLUGIN_EXPORT void dsrl_env_destroy(void* handle) { free(handle); }

DSRL_ENV_PLUGIN_EXPORT void dsrl_env_free(char* text) { free(text); }
