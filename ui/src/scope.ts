// The lifetime of one view: its timers and requests end when the user leaves it.

export class Scope {
  private readonly controller = new AbortController();
  private readonly cleanups: (() => void)[] = [];

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  get alive(): boolean {
    return !this.controller.signal.aborted;
  }

  onDispose(cleanup: () => void): void {
    this.cleanups.push(cleanup);
  }

  /**
   * Run `task` now and every `intervalMs` after it ends, while the view lives; a tick is
   * skipped while the page is hidden. Returns a function that runs it again at once.
   */
  every(intervalMs: number, task: () => Promise<void>): () => void {
    let timer: number | undefined;
    let running = false;
    let again = false;
    const tick = async (): Promise<void> => {
      if (!this.alive) return;
      if (running) {
        again = true;
        return;
      }
      window.clearTimeout(timer);
      if (!document.hidden) {
        running = true;
        try {
          await task();
        } catch (error) {
          console.error(error);
        } finally {
          running = false;
        }
      }
      if (!this.alive) return;
      if (again) {
        again = false;
        void tick();
        return;
      }
      timer = window.setTimeout(() => void tick(), intervalMs);
    };
    this.onDispose(() => window.clearTimeout(timer));
    void tick();
    return () => void tick();
  }

  dispose(): void {
    this.controller.abort();
    for (const cleanup of this.cleanups.splice(0)) cleanup();
  }
}
