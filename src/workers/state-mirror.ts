// A worker's copy of the control plane's cluster state, kept as the objects of one config
// source. It starts from the full state handed over at fork and then applies each change
// (what was added, updated, removed). Objects that did not change keep their identity, so
// the worker's ConfigStore compares only the changed ones. A change that does not follow
// the generation it holds is refused: the caller then asks for the whole state. It never
// talks to the channel.
import { keysOf, refKey, type ConfigStore, type TranslatedObject } from '../config/index.js';
import type { StateChange, StateSnapshot } from './protocol.js';

export class StateMirror {
  private readonly objects = new Map<string, TranslatedObject>();
  private generation_: number;

  constructor(
    private readonly store: ConfigStore,
    private readonly sourceId: string,
    initial: StateSnapshot,
  ) {
    this.generation_ = initial.generation;
    this.reset(initial);
  }

  /** Takes the whole state (at start, and after a missed change). */
  reset(snapshot: StateSnapshot): void {
    this.objects.clear();
    for (const obj of snapshot.objects) this.objects.set(keysOf(obj).ref, obj);
    this.generation_ = snapshot.generation;
    this.store.replaceFromSource(this.sourceId, this.objects.values());
  }

  /** The control plane's generation of the state this copy holds. */
  get generation(): number {
    return this.generation_;
  }

  /**
   * Applies a change made on top of the generation held here. Returns false, changing
   * nothing, when it was made on another (a change was missed): ask for the whole state.
   */
  apply(change: StateChange): boolean {
    if (change.generation !== this.generation_ + 1) return false;
    for (const ref of change.removed) this.objects.delete(refKey(ref));
    for (const obj of change.upserts) this.objects.set(keysOf(obj).ref, obj);
    this.generation_ = change.generation;
    this.store.replaceFromSource(this.sourceId, this.objects.values());
    return true;
  }
}
