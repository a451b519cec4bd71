/* The environment plugin ABI (issue 20): a shared library, in any language with a C ABI, that exports these
 * functions. Every request and answer is a NUL-terminated UTF-8 JSON text of the protocol in agent/environment.h
 * (reset/step/verify); strings the plugin returns are freed with its own dsrl_env_free. dsrl loads the libraries
 * of `agent.plugins` at start-up (agent/plugin.h), refuses one whose ABI version differs, and registers its
 * environment under dsrl_env_plugin_name(). An in-process plugin shares dsrl's address space: a crash takes the
 * job down. Untrusted or fragile code belongs in a subprocess environment (agent/subprocess.h).
 *
 *   int dsrl_env_plugin_abi_version(void) { return DSRL_ENV_PLUGIN_ABI_VERSION; }
 *   const char* dsrl_env_plugin_name(void) { return "my_env"; }
 *   void* dsrl_env_create(const char* params_json, char** error);          // NULL and *error on failure
 *   char* dsrl_env_call(void* env, const char* op, const char* request_json, char** error);  // op: reset|step|verify
 *   void dsrl_env_destroy(void* env);
 *   void dsrl_env_free(char* text);
 */
#ifndef DSRL_AGENT_PLUGIN_API_H_
#define DSRL_AGENT_PLUGIN_API_H_

/* Bumped whenever the functions above change. */
#define DSRL_ENV_PLUGIN_ABI_VERSION 1

#ifdef __cplusplus
#define DSRL_ENV_PLUGIN_EXPORT extern "C" __attribute__((visibility("default")))
#else
#define DSRL_ENV_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

#endif /* DSRL_AGENT_PLUGIN_API_H_ */
