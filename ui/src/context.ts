import type { Scope } from "./scope";
import type { Me } from "./types";

export const BASE = import.meta.env.BASE_URL; // "/ui/"

export interface Context {
  me: Me;
  scope: Scope;
  query: URLSearchParams;
  navigate: (path: string) => void;
}

export type View = (ctx: Context) => HTMLElement;

export function isAdmin(me: Me): boolean {
  return me.role === "admin";
}

export function mayCall(me: Me): boolean {
  return me.role === "admin" || me.role === "developer";
}
