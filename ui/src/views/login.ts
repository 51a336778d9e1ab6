import { ApiError, errorMessage, request } from "../api";
import { BASE } from "../context";
import { field, h, replace } from "../dom";

export interface LoginOptions {
  next: string;
  reason: string | null;
  onLoggedIn: (next: string) => void;
}

/** POST /api/v1/auth/login; the server sets the session, refresh and CSRF cookies. */
export function loginView(options: LoginOptions): HTMLElement {
  const username = h("input", {
    testid: "login-username",
    attrs: { name: "username", autocomplete: "username", required: true, maxlength: 64, autofocus: true },
  });
  const password = h("input", {
    testid: "login-password",
    attrs: { name: "password", type: "password", autocomplete: "current-password", required: true, maxlength: 1024 },
  });
  const error = h("div", { class: "error", testid: "login-error", attrs: { role: "alert", hidden: true } });
  const submit = h("button", { testid: "login-submit", attrs: { type: "submit" } }, "Sign in");

  const form = h(
    "form",
    {
      class: "login-card",
      testid: "login-form",
      on: {
        submit: (event) => {
          event.preventDefault();
          void signIn();
        },
      },
    },
    h("div", { class: "login-brand" }, h("img", { attrs: { src: `${BASE}favicon.svg`, alt: "", width: 36, height: 36 } }), h("h1", null, "HelixFlow")),
    h("p", { class: "muted" }, "Sign in to the dashboard."),
    options.reason === "session"
      ? h("div", { class: "notice", testid: "login-notice" }, "Your session has ended: sign in again.")
      : null,
    field("User name", username),
    field("Password", password),
    error,
    submit,
  );

  async function signIn(): Promise<void> {
    error.hidden = true;
    submit.disabled = true;
    submit.textContent = "Signing in…";
    try {
      const response = await request("/api/v1/auth/login", {
        method: "POST",
        body: { username: username.value, password: password.value },
        anonymous: true,
      });
      if (!response.ok) throw await ApiError.from(response);
      options.onLoggedIn(options.next);
    } catch (failure) {
      replace(error, loginError(failure));
      error.hidden = false;
      password.value = "";
      password.focus();
    } finally {
      submit.disabled = false;
      submit.textContent = "Sign in";
    }
  }

  return h("div", { class: "login-page", testid: "view-login" }, form);
}

function loginError(failure: unknown): string {
  if (failure instanceof ApiError) {
    if (failure.status === 401) return failure.message || "Incorrect username or password.";
    if (failure.status === 429) return failure.message || "Too many attempts; try again shortly.";
    if (failure.status === 422 || failure.status === 400) return "Enter a user name and a password.";
    if (failure.status === 503) return `Sign-in is not available on this server: ${failure.message}`;
  }
  return `Sign-in failed: ${errorMessage(failure)}`;
}
