import { useState } from "preact/hooks";
import { uploadWithProgress, withQuery, api, type ImportRecord } from "../api";
import {
  ErrorBox,
  LoadState,
  Page,
  Table,
  formatNumber,
  formatTime,
  useLoad,
  valueOf,
  useCursorPages,
  nextId,
} from "../components/ui";
import { organisationName } from "../session";

/** Posts a file with upload progress, CSV or ERP JSON by its name. */
function upload<T>(path: string, file: File, onProgress: (fraction: number) => void): Promise<T> {
  const contentType = file.name.toLowerCase().endsWith(".json") ? "application/json" : "text/csv";
  return uploadWithProgress<T>(path, file, contentType, onProgress);
}

export function ImportReport({ record }: { record: ImportRecord }) {
  return (
    <div class="card import-report" data-testid="import-report">
      <h2>
        Import {record.id}: {record.source_name}
      </h2>
      <p>
        <strong>{formatNumber(record.rows_accepted)}</strong> row(s) accepted,{" "}
        <strong class={record.rows_rejected ? "bad" : undefined}>{formatNumber(record.rows_rejected)}</strong> rejected
        {record.rows_rejected > 0 && !record.partial && record.rows_accepted === 0 && (
          <> — nothing was imported (all or nothing): fix the rows below and upload again, or import the good rows</>
        )}
        .
      </p>
      {record.rejections.length > 0 && (
        <table class="rejections">
          <thead>
            <tr>
              <th>Line</th>
              <th>Reason</th>
            </tr>
          </thead>
          <tbody>
            {record.rejections.map((r) => (
              <tr>
                <td>{r.line}</td>
                <td>{r.reason}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}

export function ImportDevices() {
  const [file, setFile] = useState<File | null>(null);
  const [partial, setPartial] = useState(false);
  const [progress, setProgress] = useState<number | null>(null);
  const [record, setRecord] = useState<ImportRecord | null>(null);
  const [error, setError] = useState<unknown>(null);
  const send = async (e: Event) => {
    e.preventDefault();
    if (!file) {
      setError(new Error("Choose a CSV file (or an ERP JSON batch) first."));
      return;
    }
    setError(null);
    setRecord(null);
    setProgress(0);
    try {
      setRecord(
        await upload<ImportRecord>(withQuery("/devices/import", { partial, source: file.name }), file, setProgress),
      );
    } catch (err) {
      setError(err);
    } finally {
      setProgress(null);
    }
  };
  return (
    <Page title="Import devices">
      <form class="card" onSubmit={send} noValidate>
        <p>
          A CSV file with a header row: <code>name, model, serial, mac, imei, iccid, organisation, labels</code>{" "}
          (model, serial and mac are required; labels separated by <code>;</code>). An ERP batch as JSON is accepted too.
        </p>
        <input
          type="file"
          name="file"
          accept=".csv,text/csv,.json,application/json"
          aria-label="CSV file"
          onChange={(e) => setFile(e.currentTarget.files?.[0] ?? null)}
        />
        <label class="check-line">
          <input type="checkbox" checked={partial} onChange={(e) => setPartial(e.currentTarget.checked)} /> Import the
          good rows even if some are rejected (otherwise all or nothing)
        </label>
        {progress != null && (
          <div class="progress" role="progressbar" aria-valuenow={Math.round(progress * 100)}>
            <div style={{ width: `${progress * 100}%` }} />
            <span>{progress < 1 ? `Uploading… ${Math.round(progress * 100)} %` : "Checking the rows…"}</span>
          </div>
        )}
        {error != null && <ErrorBox error={error} />}
        <footer>
          <button type="submit" class="primary" disabled={progress != null}>
            Upload and import
          </button>
        </footer>
      </form>
      {record && <ImportReport record={record} />}
    </Page>
  );
}

export function ImportRecords() {
  const [kind, setKind] = useState("");
  const { cursor: beforeId, pager } = useCursorPages<number>(kind);
  const records = useLoad(
    (signal) =>
      api<ImportRecord[]>("/imports", { query: { kind, before_id: beforeId ?? undefined, limit: 50 }, signal }),
    [kind, beforeId],
  );
  const [open, setOpen] = useState<ImportRecord | null>(null);
  return (
    <Page title="ERP import records">
      <div class="filters">
        <select
          aria-label="kind"
          value={kind}
          onChange={(e) => {
            setKind(valueOf(e));
          }}
        >
          <option value="">Devices and license keys</option>
          <option value="devices">Devices</option>
          <option value="license_keys">License keys</option>
        </select>
      </div>
      <LoadState loaded={records} empty="No imports yet.">
        {(list) => (
          <>
            <Table
              testId="imports"
              columns={[
                { title: "When", cell: (r: ImportRecord) => formatTime(r.created_at) },
                { title: "Kind", cell: (r) => r.kind.replace("_", " ") },
                { title: "Source", cell: (r) => r.source_name },
                { title: "By", cell: (r) => r.actor },
                { title: "Into", cell: (r) => organisationName(r.organisation_id) },
                { title: "Accepted", cell: (r) => formatNumber(r.rows_accepted) },
                { title: "Rejected", cell: (r) => formatNumber(r.rows_rejected) },
                { title: "Mode", cell: (r) => (r.partial ? "partial" : "all or nothing") },
                {
                  title: "",
                  cell: (r) =>
                    r.rejections.length > 0 && (
                      <button type="button" class="link" onClick={() => setOpen(open?.id === r.id ? null : r)}>
                        {open?.id === r.id ? "Hide" : "Show"} rejections
                      </button>
                    ),
                },
              ]}
              rows={list}
              rowKey={(r) => r.id}
            />
            {pager(nextId(list, 50))}
          </>
        )}
      </LoadState>
      {open && <ImportReport record={open} />}
    </Page>
  );
}
