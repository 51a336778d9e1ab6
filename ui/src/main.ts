import "./style.css";
import { ApiError, errorMessage, json, request, session } from "./api";
import { BASE, type View } from "./context";
import { h, replace } from "./dom";
import { Scope } from "./scope";
import type { Me } from "./types";
import { analyticsView } from "./views/analytics";
import { keysView } from "./views/keys";
import { loginView } from "./views/login";
import { overviewView } from "./views/overview";
import { placeholderView } from "./views/placeholder";
import { playgroundView } from "./views/playground";
import { routerView } from "./views/router";
import { settingsView } from "./views/settings";

interface Route {
  path: string;
  title: string;
  view: View;
  /** Not built yet: shown in the navigation, disabled. */
  later?: boolean;
}

const ROUTES: Route[] = [
  { path: "overview", title: "Overview", view: overviewView },
  { path: "playground", title: "Playground", view: playgroundView },
  { path: "router", title: "Models & router", view: routerView },
  { path: "analytics", title: "Analytics", view: analyticsView },
  { path: "keys", title: "Keys & users", view: keysView },
  { path: "settings", title: "Settings", view: settingsView },
  { path: "experiments", title: "Experiments", view: placeholderView("Experiments"), later: true },
  { path: "versions", title: "Versions", view: placeholderView("Versions"), later: true },
  { path: "workflows", title: "Workflows", view: placeholderView("Workflows"), later: true },
  { path: "training", title: "Training", view: placeholderView("Training"), later: true },
];
const HOME = `${BASE}overview`;
const LOGIN = `${BASE}login`;

class App {
  private me: Me | null = null;
  private scope: Scope | null = null;
  private shell: { root: HTMLElement; main: HTMLElement; nav: HTMLElement; user: HTMLElement } | null = null;

  constructor(private readonly root: HTMLElement) {
    session.onLost(() => this.sessionLost());
    window.addEventListener("popstate", () => void this.render());
    document.addEventListener("click", (event) => this.follow(event));
  }

  navigate(path: string, replaceState = false): void {
    if (path !== location.pathname + location.search) {
      if (replaceState) history.replaceState(null, "", path);
      else history.pushState(null, "", path);
    }
    void this.render();
  }

  /** Links inside the app change the view without reloading the page. */
  private follow(event: MouseEvent): void {
    if (event.defaultPrevented || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    const target = event.target instanceof Element ? event.target.closest("a[data-link]") : null;
    if (!(target instanceof HTMLAnchorElement)) return;
    const url = new URL(target.href);
    if (url.origin !== location.origin || !url.pathname.startsWith(BASE)) return;
    event.preventDefault();
    this.navigate(url.pathname + url.search);
  }

  private sessionLost(): void {
    const hadSession = this.me !== null;
    this.me = null;
    const here = location.pathname + location.search;
    if (location.pathname === LOGIN) return;
    const query = new URLSearchParams(hadSession ? { reason: "session" } : {});
    if (here.startsWith(BASE) && here !== BASE && here !== HOME) query.set("next", here);
    const search = query.toString();
    this.navigate(search === "" ? LOGIN : `${LOGIN}?${search}`, true);
  }

  async render(): Promise<void> {
    this.scope?.dispose();
    const scope = new Scope();
    this.scope = scope;
    const path = location.pathname;
    const query = new URLSearchParams(location.search);

    if (path === LOGIN) {
      this.shell = null;
      document.title = "Sign in · HelixFlow";
      replace(
        this.root,
        loginView({
          next: safeNext(query.get("next")),
          reason: query.get("reason"),
          onLoggedIn: (next) => {
            this.me = null;
            this.navigate(next, true);
          },
        }),
      );
      return;
    }
    if (path === BASE || path === BASE.slice(0, -1)) {
      this.navigate(HOME, true);
      return;
    }
    if (this.me === null) {
      replace(this.root, h("div", { class: "booting", testid: "booting" }, "Loading…"));
      try {
        this.me = await json<Me>("/api/v1/users/me", { signal: scope.signal });
      } catch (error) {
        if (error instanceof ApiError && error.status === 401) return; // sessionLost took over
        if (!scope.alive) return;
        replace(
          this.root,
          h("div", { class: "fatal", testid: "fatal" }, h("h1", null, "HelixFlow"), h("p", null, `The server could not be reached: ${errorMessage(error)}`)),
        );
        return;
      }
      if (!scope.alive) return;
    }
    const me = this.me;
    const name = path.slice(BASE.length).split("/")[0] ?? "";
    const route = ROUTES.find((r) => r.path === name);
    const shell = this.ensureShell(me);
    for (const link of shell.nav.querySelectorAll("[data-route]")) {
      const active = link.getAttribute("data-route") === name;
      link.classList.toggle("active", active);
      if (active) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    document.title = `${route?.title ?? "Not found"} · HelixFlow`;
    const content =
      route === undefined
        ? h("div", { class: "view", testid: "view-not-found" }, h("h1", null, "Not found"), h("p", null, "There is no such page. ", h("a", { attrs: { href: HOME }, dataset: { link: "" } }, "Back to the overview")))
        : route.view({ me, scope, query, navigate: (p) => this.navigate(p) });
    replace(shell.main, content);
  }

  private ensureShell(me: Me): { main: HTMLElement; nav: HTMLElement } {
    if (this.shell !== null && this.root.contains(this.shell.root)) return this.shell;
    const nav = h(
      "nav",
      { class: "nav", testid: "nav", attrs: { "aria-label": "Main" } },
      h("ul", null, ROUTES.filter((r) => r.later !== true).map((r) =>
        h("li", null, h("a", { attrs: { href: `${BASE}${r.path}` }, dataset: { link: "", route: r.path }, testid: `nav-${r.path}` }, r.title)),
      )),
      h("div", { class: "nav-heading" }, "Coming later"),
      h("ul", null, ROUTES.filter((r) => r.later === true).map((r) =>
        h("li", null, h("span", { class: "disabled", attrs: { "aria-disabled": "true" }, title: `${r.title}: coming in a later release`, testid: `nav-${r.path}`, dataset: { route: r.path } }, r.title)),
      )),
    );
    const logout =
      me.kind === "anonymous"
        ? h("span", { class: "badge warn", testid: "auth-off", title: "No user or API key exists yet: every request acts as an admin (loopback only)." }, "authentication off")
        : h("button", { class: "secondary small", testid: "logout", attrs: { type: "button" }, on: { click: () => void this.logout() } }, "Sign out");
    const user = h(
      "div",
      { class: "user" },
      h("span", { testid: "user-name" }, me.user?.display_name ?? me.name),
      h("span", { class: "badge", testid: "user-role" }, me.role),
      logout,
    );
    const main = h("main", { class: "content", testid: "content" });
    const root = h(
      "div",
      { class: "shell" },
      h("header", { class: "topbar" }, h("a", { class: "brand", attrs: { href: HOME }, dataset: { link: "" } }, h("img", { attrs: { src: `${BASE}favicon.svg`, alt: "", width: 22, height: 22 } }), "HelixFlow"), user),
      nav,
      main,
    );
    replace(this.root, root);
    this.shell = { root, main, nav, user };
    return this.shell;
  }

  private async logout(): Promise<void> {
    try {
      await request("/api/v1/auth/logout", { method: "POST" });
    } finally {
      this.me = null;
      this.navigate(LOGIN, true);
    }
  }
}

/** Only a path inside the dashboard may be the page shown after login. */
function safeNext(next: string | null): string {
  if (next !== null && next.startsWith(BASE) && !next.startsWith("//") && !next.startsWith(LOGIN)) {
    return next;
  }
  return HOME;
}

const root = document.getElementById("app");
if (root !== null) {
  const app = new App(root);
  void app.render();
}
