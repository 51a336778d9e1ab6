// Calls to the server with the dashboard's session: cookies (same origin only), the CSRF
// double-submit header on unsafe methods, and one refresh of the session on a 401.

export const CSRF_COOKIE = "helixflow_csrf";
export const CSRF_HEADER = "X-CSRF-Token";
const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS", "TRACE"]);
const AUTH_PREFIX = "/api/v1/auth/";

/** An error reply, from OpenAI's envelope `{"error": {message, type, param, code}}`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code: string | null = null,
    readonly type: string | null = null,
    readonly param: string | null = null,
  ) {
    super(message);
    this.name = "ApiError";
  }

  static async from(response: Response): Promise<ApiError> {
    let body: unknown = null;
    try {
      body = await response.json();
    } catch {
      // Not JSON (a proxy's page): the status says enough.
    }
    const error = isRecord(body) && isRecord(body.error) ? body.error : null;
    const text = (key: string): string | null => {
      const value = error?.[key];
      return typeof value === "string" ? value : null;
    };
    const message =
      text("message") ?? (isRecord(body) && typeof body.detail === "string" ? body.detail : null);
    return new ApiError(
      response.status,
      message ?? `${response.status} ${response.statusText || "error"}`,
      text("code"),
      text("type"),
      text("param"),
    );
  }
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

export function cookie(name: string): string | null {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return null;
}

type SessionLost = () => void;

/**
 * One in-flight refresh at a time: refresh tokens rotate and a spent one shown again revokes
 * the whole session, so concurrent 401s must share a single refresh.
 */
class Session {
  private refreshing: Promise<boolean> | null = null;
  private lostHandler: SessionLost = () => undefined;

  onLost(handler: SessionLost): void {
    this.lostHandler = handler;
  }

  lost(): void {
    this.lostHandler();
  }

  refresh(): Promise<boolean> {
    if (this.refreshing === null) {
      this.refreshing = fetch(`${AUTH_PREFIX}refresh`, {
        method: "POST",
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      })
        .then((response) => response.ok)
        .catch(() => false)
        .finally(() => {
          this.refreshing = null;
        });
    }
    return this.refreshing;
  }
}

export const session = new Session();

export interface RequestOptions {
  method?: string;
  body?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal | undefined;
  /** Do not treat a 401 as the end of the session (login form). */
  anonymous?: boolean;
}

/** A fetch with the session: the Response, whatever its status (except a lost session). */
export async function request(path: string, options: RequestOptions = {}): Promise<Response> {
  const method = (options.method ?? "GET").toUpperCase();
  const send = (): Promise<Response> => {
    const headers = new Headers(options.headers);
    headers.set("Accept", headers.get("Accept") ?? "application/json");
    if (!SAFE_METHODS.has(method)) {
      const token = cookie(CSRF_COOKIE);
      if (token !== null) headers.set(CSRF_HEADER, token);
    }
    let body: string | undefined;
    if (options.body !== undefined) {
      body = JSON.stringify(options.body);
      headers.set("Content-Type", "application/json");
    }
    return fetch(path, {
      method,
      headers,
      body: body ?? null,
      credentials: "same-origin",
      signal: options.signal ?? null,
    });
  };
  const response = await send();
  if (response.status !== 401 || options.anonymous === true || path.startsWith(AUTH_PREFIX)) {
    return response;
  }
  if (await session.refresh()) {
    const again = await send();
    if (again.status !== 401) return again;
  }
  session.lost();
  throw await ApiError.from(response);
}

/** JSON from a successful reply; an ApiError otherwise. */
export async function json<T>(path: string, options: RequestOptions = {}): Promise<T> {
  const response = await request(path, options);
  if (!response.ok) throw await ApiError.from(response);
  if (response.status === 204) return undefined as T;
  return (await response.json()) as T;
}

/** `path?key=value&...`, leaving out empty values. */
export function withQuery(
  path: string,
  query: Record<string, string | number | boolean | null | undefined>,
): string {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value === null || value === undefined || value === "" || value === false) continue;
    params.set(key, String(value));
  }
  const text = params.toString();
  return text === "" ? path : `${path}?${text}`;
}

export function errorMessage(error: unknown): string {
  if (error instanceof ApiError) {
    if (error.status === 403 && error.code === "insufficient_role") {
      return `Not allowed for your role: ${error.message}`;
    }
    return error.message;
  }
  if (error instanceof Error) return error.message;
  return String(error);
}
