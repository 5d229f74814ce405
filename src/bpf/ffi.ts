// Raw FFI bindings: libbpf (Debian libbpf1), libc, and weft's own shim (native/, built to
// build/libweft.so). This module only declares functions; it decides nothing and keeps no
// state beyond the loaded library handles. Callers use the typed wrappers in the sibling
// modules, or one small module that owns the call (src/redirect/, src/proxy/upstream.ts,
// src/cli/heap-trim.ts).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import koffi, { type LibraryHandle } from 'koffi';

/** Repository root, found from this compiled module's location (dist/src/bpf/ffi.js). */
export const packageRoot = fileURLToPath(new URL('../../../', import.meta.url));
export const buildDir = `${packageRoot}build`;

function loadLibrary(path: string, hint: string): LibraryHandle {
  try {
    return koffi.load(path);
  } catch (error) {
    throw new Error(`cannot load ${path}: ${(error as Error).message}. ${hint}`, { cause: error });
  }
}

const nativePath = `${buildDir}/libweft.so`;
if (!existsSync(nativePath)) {
  throw new Error(`${nativePath} is missing: run \`npm run build\` (builds bpf/ and native/)`);
}

const libbpfLib = loadLibrary('libbpf.so.1', 'Install it with `apt-get install libbpf1`.');
const libcLib = loadLibrary('libc.so.6', 'weft needs glibc.');
const nativeLib = loadLibrary(nativePath, 'Rebuild it with `npm run build`.');

koffi.opaque('bpf_object');
koffi.opaque('bpf_program');
koffi.opaque('bpf_map');
const ifNameIndex = koffi.struct('if_nameindex', { if_index: 'unsigned int', if_name: 'char *' });

export const libbpf = {
  openFile: libbpfLib.func('bpf_object *bpf_object__open_file(const char *path, void *opts)'),
  load: libbpfLib.func('int bpf_object__load(bpf_object *obj)'),
  close: libbpfLib.func('void bpf_object__close(bpf_object *obj)'),
  findProgram: libbpfLib.func(
    'bpf_program *bpf_object__find_program_by_name(bpf_object *obj, const char *name)',
  ),
  programFd: libbpfLib.func('int bpf_program__fd(bpf_program *prog)'),
  findMap: libbpfLib.func(
    'bpf_map *bpf_object__find_map_by_name(bpf_object *obj, const char *name)',
  ),
  mapFd: libbpfLib.func('int bpf_map__fd(bpf_map *map)'),
  mapSetPinPath: libbpfLib.func('int bpf_map__set_pin_path(bpf_map *map, const char *path)'),
  mapIsPinned: libbpfLib.func('bool bpf_map__is_pinned(bpf_map *map)'),
  getError: libbpfLib.func('long libbpf_get_error(const void *ptr)'),
  objPin: libbpfLib.func('int bpf_obj_pin(int fd, const char *path)'),
  objGet: libbpfLib.func('int bpf_obj_get(const char *path)'),
  mapUpdate: libbpfLib.func(
    'int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)',
  ),
  mapLookup: libbpfLib.func('int bpf_map_lookup_elem(int fd, const void *key, _Out_ void *value)'),
  mapDelete: libbpfLib.func('int bpf_map_delete_elem(int fd, const void *key)'),
  mapNextKey: libbpfLib.func(
    'int bpf_map_get_next_key(int fd, const void *key, _Out_ void *next_key)',
  ),
  linkUpdate: libbpfLib.func('int bpf_link_update(int link_fd, int new_prog_fd, void *opts)'),
  progGetFdById: libbpfLib.func('int bpf_prog_get_fd_by_id(uint32_t id)'),
  numPossibleCpus: libbpfLib.func('int libbpf_num_possible_cpus()'),
};

export const libc = {
  close: libcLib.func('int close(int fd)'),
  mallocTrim: libcLib.func('int malloc_trim(size_t pad)'),
  ifNameToIndex: libcLib.func('unsigned int if_nametoindex(const char *ifname)'),
  ifNameIndex: libcLib.func('if_nameindex *if_nameindex()'),
  ifFreeNameIndex: libcLib.func('void if_freenameindex(if_nameindex *ptr)'),
  ifNameIndexType: ifNameIndex,
};

export const native = {
  listenTransparent: nativeLib.func(
    'int weft_listen_transparent(const char *ip, int port, int backlog)',
  ),
  listenReuseport: nativeLib.func(
    'int weft_listen_reuseport(const char *ip, int port, int backlog)',
  ),
  socketTransparent: nativeLib.func('int weft_socket_transparent(const char *ip, int port)'),
  socketCookie: nativeLib.func('int weft_socket_cookie(int fd, _Out_ uint64_t *cookie)'),
  originalDst: nativeLib.func(
    'int weft_original_dst(int fd, _Out_ char *ip, int ip_len, _Out_ int *port)',
  ),
  tcAttach: nativeLib.func(
    'int weft_tc_attach(int ifindex, int prog_fd, unsigned int priority, unsigned int handle, int replace)',
  ),
  tcDetach: nativeLib.func(
    'int weft_tc_detach(int ifindex, unsigned int priority, unsigned int handle)',
  ),
  tcQuery: nativeLib.func(
    'int weft_tc_query(int ifindex, unsigned int priority, unsigned int handle, _Out_ unsigned int *prog_id)',
  ),
  tcxAttach: nativeLib.func('int weft_tcx_attach(int ifindex, int prog_fd)'),
  linkInfo: nativeLib.func(
    'int weft_link_info(int fd, _Out_ unsigned int *type, _Out_ unsigned int *prog_id, _Out_ unsigned int *ifindex)',
  ),
  ruleAdd: nativeLib.func(
    'int weft_rule_add(uint32_t mark, uint32_t mask, uint32_t table, uint32_t priority)',
  ),
  ruleDel: nativeLib.func(
    'int weft_rule_del(uint32_t mark, uint32_t mask, uint32_t table, uint32_t priority)',
  ),
  localRouteAdd: nativeLib.func('int weft_local_route_add(uint32_t table, int lo_ifindex)'),
  localRouteDel: nativeLib.func('int weft_local_route_del(uint32_t table, int lo_ifindex)'),
  linkNetnsId: nativeLib.func('int weft_link_netnsid(int ifindex)'),
  netnsId: nativeLib.func('int weft_netns_id(const char *path)'),
  tcpDestroy: nativeLib.func(
    'int weft_tcp_destroy(const char *netns_path, const char *local_ip, int local_port, const char *remote_ip, int remote_port)',
  ),
};

/** The thread's errno after a libbpf/libc call that reported failure. */
export function lastErrno(): number {
  return koffi.errno();
}

export { koffi };
