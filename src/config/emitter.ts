// config/emitter.ts: a small typed event emitter (event name -> argument tuple). Listeners run
// synchronously in registration order; one that throws does not stop the others. It must not
// know about any particular event.

export type ListenerErrorHandler = (err: unknown, event: string) => void;

export class TypedEmitter<Events extends { [E in keyof Events]: unknown[] }> {
  private readonly handlers: { [E in keyof Events]?: Set<(...args: Events[E]) => void> } = {};

  /**
   * @param onListenerError receives exceptions thrown by listeners. Without it, the first
   *   exception is rethrown from emit() after every listener has run.
   */
  constructor(private readonly onListenerError?: ListenerErrorHandler) {}

  /** Adds a listener; returns a function that removes it. */
  on<E extends keyof Events>(event: E, listener: (...args: Events[E]) => void): () => void {
    let set = this.handlers[event];
    if (set === undefined) {
      set = new Set();
      this.handlers[event] = set;
    }
    set.add(listener);
    return () => this.off(event, listener);
  }

  off<E extends keyof Events>(event: E, listener: (...args: Events[E]) => void): void {
    this.handlers[event]?.delete(listener);
  }

  listenerCount<E extends keyof Events>(event: E): number {
    return this.handlers[event]?.size ?? 0;
  }

  protected emit<E extends keyof Events>(event: E, ...args: Events[E]): void {
    const set = this.handlers[event];
    if (set === undefined) return;
    let first: { err: unknown } | undefined;
    for (const listener of [...set]) {
      try {
        listener(...args);
      } catch (err) {
        if (this.onListenerError) this.onListenerError(err, String(event));
        else first ??= { err };
      }
    }
    if (first) throw first.err;
  }
}
