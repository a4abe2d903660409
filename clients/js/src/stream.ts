// A stream the client opened (`sub`): its items as an async iterator, pulled within the
// credit the client grants, so a slow reader slows the server instead of filling memory.

import { PlexusError } from "./errors.js";

/** What the client does for a stream: grant more credit, cancel it, forget it. */
export interface StreamLink {
  credit(n: number): void;
  cancel(): void;
  /** The stream is over (ended, failed or cancelled). */
  finished(): void;
}

/**
 * The items of a stream. Iterate it with `for await`; leaving the loop early (`break`,
 * `return`, an exception) or the call's `AbortSignal` sends `cancel`.
 */
export class CallStream<T> implements AsyncIterableIterator<T> {
  #items: T[] = [];
  #finished = false;
  #error: PlexusError | undefined;
  #waiter: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void } | undefined;
  #consumed = 0;
  #link: StreamLink | undefined;
  readonly #window: number;

  /** @internal */
  constructor(window: number) {
    this.#window = window;
  }

  /** @internal */
  attach(link: StreamLink): void {
    this.#link = link;
  }

  /** @internal An item arrived. */
  push(item: T): void {
    if (this.#finished) return;
    if (this.#waiter) {
      const waiter = this.#waiter;
      this.#waiter = undefined;
      this.#taken();
      waiter.resolve({ value: item, done: false });
    } else {
      this.#items.push(item);
    }
  }

  /** @internal The stream ended (`end`), or failed. */
  finish(error?: PlexusError): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#error = error;
    this.#link?.finished();
    this.#link = undefined;
    if (this.#waiter && this.#items.length === 0) {
      const waiter = this.#waiter;
      this.#waiter = undefined;
      if (error) waiter.reject(error);
      else waiter.resolve({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<T>> {
    if (this.#items.length > 0) {
      const item = this.#items.shift() as T;
      this.#taken();
      return Promise.resolve({ value: item, done: false });
    }
    if (this.#finished) {
      const error = this.#error;
      this.#error = undefined;
      return error ? Promise.reject(error) : Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => {
      this.#waiter = { resolve, reject };
    });
  }

  /** Stops reading: sends `cancel` if the stream still runs. */
  return(): Promise<IteratorResult<T>> {
    this.cancel();
    return Promise.resolve({ value: undefined, done: true });
  }

  /** Cancels the stream: the server stops it and sends nothing more. */
  cancel(): void {
    const link = this.#link;
    this.#items = [];
    this.finish();
    link?.cancel();
  }

  /** @internal Whether it is over. */
  get finished(): boolean {
    return this.#finished;
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<T> {
    return this;
  }

  /** One item handed to the reader: grant credit back in halves of the window. */
  #taken(): void {
    this.#consumed += 1;
    const half = Math.max(1, Math.floor(this.#window / 2));
    if (this.#consumed >= half && this.#link) {
      this.#consumed -= half;
      this.#link.credit(half);
    }
  }
}
