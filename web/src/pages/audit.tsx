import { useState } from "preact/hooks";
import { api, withQuery, type AuditEntry } from "../api";
import { organisationName } from "../session";
import {
  LoadState,
  Page,
  Table,
  formatTime,
  useDebounced,
  useLoad,
  valueOf,
  useCursorPages,
  nextId,
} from "../components/ui";

export function AuditLog() {
  const [text, setText] = useState("");
  const search = useDebounced(text, 300);
  const { cursor: beforeId, pager } = useCursorPages<number>(search);
  const entries = useLoad(
    (signal) =>
      api<AuditEntry[]>("/audit", { query: { search, before_id: beforeId ?? undefined, limit: 100 }, signal }),
    [search, beforeId],
  );
  return (
    <Page
      title="System logs"
      actions={
        <a class="button" href={withQuery("/api/v1/audit.csv", { search, limit: 10000 })} download="telemark-audit.csv">
          Export CSV
        </a>
      }
    >
      <div class="filters" role="search">
        <input
          type="search"
          aria-label="search the system log"
          placeholder="Search actor, action or target"
          value={text}
          onInput={(e) => setText(valueOf(e))}
        />
      </div>
      <LoadState loaded={entries} empty={search ? "No entry matches." : "The system log is empty."}>
        {(list) => (
          <>
            <Table
              testId="audit"
              columns={[
                { title: "When", cell: (e: AuditEntry) => formatTime(e.created_at) },
                { title: "Actor", cell: (e) => e.actor },
                { title: "Action", cell: (e) => <code>{e.action}</code> },
                { title: "Target", cell: (e) => e.target },
                { title: "Change", cell: (e) => [e.before, e.after].filter(Boolean).join(" → ") || "—" },
                { title: "Organisation", cell: (e) => organisationName(e.organisation_id) },
                { title: "Address", cell: (e) => e.address ?? "—", class: "mono" },
              ]}
              rows={list}
              rowKey={(e) => e.id}
            />
            {pager(nextId(list, 100), "newest first")}
          </>
        )}
      </LoadState>
    </Page>
  );
}
