// Errors a call ends with: the server's `err` as it came (code, message, data), or one the
// client made up (`TIMEOUT`, `UNAVAILABLE`, `CANCELLED`, `QUEUE_FULL`, `CLOSED`).

/**
 * The error codes the protocol defines (PROTOCOL.md §8), and two of this client's own that never
 * travel: `QUEUE_FULL` (the offline queue is full) and `CLOSED` (the client is closed).
 * Applications add their own.
 */
export type ErrorCode =
  | "BAD_FRAME"
  | "VALIDATION_ERROR"
  | "NOT_FOUND"
  | "NOT_AUTHORIZED"
  | "FORBIDDEN"
  | "TIMEOUT"
  | "CANCELLED"
  | "SERVICE_OFFLINE"
  | "CONFLICT"
  | "RATE_LIMITED"
  | "TOO_LARGE"
  | "UNAVAILABLE"
  | "INTERNAL"
  | "QUEUE_FULL"
  | "CLOSED"
  | (string & {});

/** An error body as the wire carries it (`e` of `err`, `reject`, `left`). */
export interface ErrorBody {
  code: string;
  message?: string;
  data?: unknown;
}

/** A call's failure: `code`, `message` and optional `data`, as the peer sent them. */
export class PlexusError extends Error {
  readonly code: ErrorCode;
  readonly data: unknown;

  constructor(code: ErrorCode, message: string, data?: unknown) {
    super(message);
    this.name = "PlexusError";
    this.code = code;
    this.data = data;
  }

  /** From the wire's `e`. */
  static from(body: ErrorBody | undefined): PlexusError {
    return new PlexusError(body?.code ?? "INTERNAL", body?.message ?? "", body?.data);
  }

  /** As the wire's `e`. */
  toBody(): ErrorBody {
    const body: ErrorBody = { code: this.code, message: this.message };
    if (this.data !== undefined) body.data = this.data;
    return body;
  }
}

/** Why connecting failed or a connection ended for good. */
export class ConnectError extends Error {
  /** The close code, when the server closed the socket (1006: no close frame). */
  readonly closeCode: number | undefined;
  /** The server's `reject` or close reason, when it gave one. */
  readonly error: ErrorBody | undefined;

  constructor(message: string, closeCode?: number, error?: ErrorBody) {
    super(message);
    this.name = "ConnectError";
    this.closeCode = closeCode;
    this.error = error;
  }
}
