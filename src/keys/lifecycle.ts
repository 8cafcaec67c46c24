import type { KeyStore } from '../../hsm/index.js';
import type { AuditEvent, RecordAuditEvent } from '../audit/events.js';
import type { KeypairRecord, KeypairRepository, KeypairState } from '../db/keypairs.js';
import { AppError } from '../errors.js';
import { isUuid } from '../core/uuid.js';

/** The waiting period before a scheduled deletion may be purged (AWS KMS: 7–30 days). */
export const DELETION_DAYS = { min: 7, max: 30, default: 30 } as const;
const DAY_MS = 86_400_000;

/** A keypair as the admin API and `strongroom keys list` show it. */
export interface KeypairAdminView {
  id: string;
  state: KeypairState;
  origin: string;
  owner: string | null;
  /** ISO-8601. */
  dateCreated: string;
  stateChangedAt: string;
  deleteAfter: string | null;
  modulusBits: number;
  publicKey: string;
  /** Whether the token holds the private key (only when asked for: it costs a token lookup). */
  inToken?: boolean;
}

export function adminView(row: KeypairRecord, inToken?: boolean): KeypairAdminView {
  return {
    id: row.id,
    state: row.state,
    origin: row.origin,
    owner: row.owner,
    dateCreated: row.dateCreated.toISOString(),
    stateChangedAt: row.stateChangedAt.toISOString(),
    deleteAfter: row.deleteAfter ? row.deleteAfter.toISOString() : null,
    modulusBits: row.modulusBits,
    publicKey: row.publicKey.toString('base64'),
    ...(inToken !== undefined && { inToken }),
  };
}

export interface KeyLifecycleOptions {
  keypairs: KeypairRepository;
  keyStore: KeyStore;
  audit: RecordAuditEvent;
  clock?: () => number;
  /** Told after every state change (the service drops its cached state at once). */
  onChange?: (keypairId: string) => void;
}

export interface PurgeResult {
  /** Keypairs whose token objects were destroyed by this run. */
  purged: string[];
}

/**
 * Enabled ⇄ Disabled; Enabled/Disabled → PendingDeletion (waiting period 7–30 days) → Deleted
 * by `purge` once the date has passed; cancelling a deletion leaves the keypair Disabled (as AWS
 * KMS does), so using it again is a second, deliberate step. Pool and generating rows are not
 * keypairs to anyone yet: they are "not found".
 *
 * Audit first, the Vault way: the event is durable (database or spool) before the state changes,
 * and if it cannot be kept nothing changes and the caller gets AUDIT_ERR_UNAVAILABLE. One
 * database transaction for both would bypass the writer's spool and its ordering (and the
 * change needs the database anyway). The price is an event for a change that then did not
 * happen (lost race, database gone): it is followed by `<event>.not-applied`, and over HTTP by
 * the request's own entry with its status.
 */
export class KeyLifecycle {
  readonly #o: KeyLifecycleOptions;
  readonly #clock: () => number;

  constructor(options: KeyLifecycleOptions) {
    this.#o = options;
    this.#clock = options.clock ?? Date.now;
  }

  /** Keypairs handed out (every state but pool), oldest first; `checkToken` adds `inToken`. */
  async list(options: { checkToken?: boolean; includePool?: boolean } = {}): Promise<KeypairAdminView[]> {
    const rows = (await this.#o.keypairs.listAll()).filter((r) => options.includePool || r.state !== 'pool');
    if (!options.checkToken) return rows.map((r) => adminView(r));
    const inToken = new Set(await this.#o.keyStore.listKeyPairIds());
    return rows.map((r) => adminView(r, inToken.has(r.id)));
  }

  async get(id: string): Promise<KeypairAdminView> {
    return adminView(await this.#find(id));
  }

  disable(id: string, actor: string): Promise<KeypairAdminView> {
    return this.#move(id, actor, 'keypair.disable', ['enabled'], 'disabled');
  }

  enable(id: string, actor: string): Promise<KeypairAdminView> {
    return this.#move(id, actor, 'keypair.enable', ['disabled'], 'enabled');
  }

  scheduleDeletion(id: string, days: unknown, actor: string): Promise<KeypairAdminView> {
    const n = days === undefined || days === null ? DELETION_DAYS.default : typeof days === 'string' && /^\d+$/.test(days) ? Number(days) : days;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < DELETION_DAYS.min || n > DELETION_DAYS.max) {
      throw new AppError('KEY_ERR_DELETION_DAYS');
    }
    const deleteAfter = new Date(this.#clock() + n * DAY_MS);
    return this.#move(id, actor, 'keypair.schedule-deletion', ['enabled', 'disabled'], 'pending_deletion', deleteAfter, { days: n });
  }

  cancelDeletion(id: string, actor: string): Promise<KeypairAdminView> {
    return this.#move(id, actor, 'keypair.cancel-deletion', ['pending_deletion'], 'disabled', null);
  }

  /** Keypairs that `purge` would destroy now. */
  async due(): Promise<KeypairAdminView[]> {
    return (await this.#o.keypairs.listDue(new Date(this.#clock()))).map((r) => adminView(r));
  }

  /**
   * Destroy the token objects of every keypair past its deletion date. The row is marked
   * `deleted` first, then the key is destroyed: a kill in between leaves a deleted row whose key
   * is still in the token (finished by the next purge), never a live row without its key.
   */
  async purge(actor: string, onProgress?: (id: string) => void): Promise<PurgeResult> {
    const now = new Date(this.#clock());
    const purged: string[] = [];
    for (const row of await this.#o.keypairs.listDue(now)) {
      const event = 'keypair.delete';
      await this.#auditFirst({
        event,
        actor,
        keypairId: row.id,
        detail: { from: 'pending_deletion', to: 'deleted', deleteAfter: row.deleteAfter?.toISOString() ?? null },
      });
      const moved = await this.#applied(event, actor, row.id, () =>
        this.#o.keypairs.transition(row.id, ['pending_deletion'], 'deleted', now),
      );
      if (!moved) continue; // cancelled or purged elsewhere meanwhile
      this.#o.onChange?.(row.id);
      // A delete that finds nothing may have missed a key another process made: a lookup
      // confirms the miss (with a token refresh where the module needs one) before it is audited.
      const destroyed =
        (await this.#o.keyStore.deleteKeyPair(row.id)) ||
        ((await this.#o.keyStore.getRsaPublicKey(row.id)) !== undefined && (await this.#o.keyStore.deleteKeyPair(row.id)));
      if (!destroyed) {
        await this.#o.audit({ event: 'keypair.purge-missing-key', actor, keypairId: row.id, detail: {} });
      }
      purged.push(row.id);
      onProgress?.(row.id);
    }
    // Deletions a kill interrupted between the two steps.
    for (const row of await this.#o.keypairs.listIn(['deleted'])) {
      if (!(await this.#o.keyStore.getRsaPublicKey(row.id))) continue;
      await this.#auditFirst({ event: 'keypair.delete', actor, keypairId: row.id, detail: { resumed: true } });
      await this.#o.keyStore.deleteKeyPair(row.id);
      purged.push(row.id);
    }
    return { purged };
  }

  async #find(id: string): Promise<KeypairRecord> {
    const row = isUuid(id) ? await this.#o.keypairs.find(id) : undefined;
    if (!row || row.state === 'pool') throw new AppError('KEY_ERR_KEYPAIR_NOT_FOUND');
    return row;
  }

  async #move(
    id: string,
    actor: string,
    event: string,
    from: readonly KeypairState[],
    to: KeypairState,
    deleteAfter?: Date | null,
    detail: Record<string, unknown> = {},
  ): Promise<KeypairAdminView> {
    const current = await this.#find(id);
    if (current.state === to && deleteAfter === undefined) return adminView(current);
    if (!from.includes(current.state)) {
      throw new AppError('KEY_ERR_INVALID_STATE', {
        message: `Key pair ${id} is ${current.state.replace('_', ' ')}; this change needs it ${from.map((s) => s.replace('_', ' ')).join(' or ')}`,
      });
    }
    await this.#auditFirst({
      event,
      actor,
      keypairId: id,
      detail: { from: current.state, to, ...(deleteAfter && { deleteAfter: deleteAfter.toISOString() }), ...detail },
    });
    const moved = await this.#applied(event, actor, id, () =>
      this.#o.keypairs.transition(id, from, to, new Date(this.#clock()), deleteAfter),
    );
    if (!moved) {
      throw new AppError('KEY_ERR_INVALID_STATE', { message: `Key pair ${id} changed state meanwhile; read it again` });
    }
    this.#o.onChange?.(id);
    return adminView(moved);
  }

  /** Record the event before the change; a failure leaves everything as it was. */
  async #auditFirst(event: AuditEvent): Promise<void> {
    try {
      await this.#o.audit(event);
    } catch (err) {
      if (err instanceof AppError && err.code === 'AUDIT_ERR_UNAVAILABLE') throw err;
      throw new AppError('AUDIT_ERR_UNAVAILABLE', { cause: err, headers: { 'retry-after': '5' }, detail: 'the audit event could not be kept' });
    }
  }

  /** Run the audited change; if it did not happen, say so in the chain (best effort) and pass the outcome on. */
  async #applied<T>(event: string, actor: string, keypairId: string, change: () => Promise<T | undefined>): Promise<T | undefined> {
    const notApplied = (reason: string) =>
      this.#o.audit({ event: `${event}.not-applied`, actor, keypairId, detail: { reason } }).catch(() => undefined);
    let result: T | undefined;
    try {
      result = await change();
    } catch (err) {
      await notApplied('error');
      throw err;
    }
    if (result === undefined) await notApplied('state changed meanwhile');
    return result;
  }
}
