// The report of the Node compatibility scripts (issue 14): the same lines as
// tests/clients/python/compat_report.py, which describes them, parsed by
// tests/integration/compat_clients.rs. One JSON line per check on stdout
// ({check, outcome: "pass" | "fail" | "not_exposed", detail, seconds}), then
// {client, done: true}.
'use strict'

// Every check, in report order (the same names as compat_report.py).
const CHECKS = [
  'admin.create_topic',
  'admin.create_topic_kafka_configs',
  'admin.describe_configs',
  'admin.alter_configs_incremental',
  'admin.alter_configs_legacy',
  'admin.create_partitions',
  'admin.delete_records',
  'admin.delete_topics',
  'admin.describe_log_dirs',
  'admin.describe_topic_partitions',
  'produce.none',
  'produce.gzip',
  'produce.snappy',
  'produce.lz4',
  'produce.zstd',
  'group.classic',
  'admin.list_groups',
  'admin.describe_groups',
  'admin.list_group_offsets',
  'admin.alter_group_offsets',
  'admin.delete_group_offsets',
  'admin.delete_groups',
  'group.consumer_protocol',
  'offsets_for_times'
]

const CODECS = ['none', 'gzip', 'snappy', 'lz4', 'zstd']
const GROUP_RECORDS = 10
const GROUP_RESUMED_RECORDS = 5
const TIMESTAMPED_RECORDS = 5
const TIMESTAMP_STEP_MS = 1000
const TIMESTAMP_BASE_MS = Math.floor((Date.now() - 600000) / 1000) * 1000
const RECORDS_PER_CODEC = 20
const DETAIL_CHARS_MAX = 400

class NotExposed extends Error {}
class CheckFailed extends Error {}

function expect (condition, message) {
  if (!condition) throw new CheckFailed(message)
}

function show (value) {
  return JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? v.toString() : Buffer.isBuffer(v) ? v.toString('hex') : v))
}

function expectEqual (found, expected, what) {
  if (show(found) !== show(expected)) {
    throw new CheckFailed(`${what}: expected ${show(expected)}, found ${show(found)}`)
  }
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

async function waitUntil (predicate, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs
  let last
  while (Date.now() < deadline) {
    last = await predicate()
    if (last) return last
    await sleep(200)
  }
  throw new CheckFailed(`${what} not within ${timeoutMs} ms (last: ${show(last)})`)
}

// The records every codec check writes and reads back (as compat_report.py's
// make_records): [{key, value, headers: [[name, Buffer]]}].
function makeRecords (codec) {
  const records = []
  for (let index = 0; index < RECORDS_PER_CODEC; index++) {
    let value
    if (index === 3) value = Buffer.alloc(0)
    else if (index === 4) value = Buffer.from(Array.from({ length: 256 }, (_, i) => i))
    else value = Buffer.from(`${codec}-value-${index}-` + 'x'.repeat(index * 50))
    const headers = [['h-index', Buffer.from(String(index))], ['h-codec', Buffer.from(codec)]]
    if (index % 5 === 0) headers.push(['h-index', Buffer.from('again')])
    records.push({ key: Buffer.from(`key-${index}`), value, headers })
  }
  return records
}

class Checks {
  constructor (client) {
    this.client = client
    this.reported = new Set()
  }

  emit (name, outcome, detail, seconds) {
    if (!CHECKS.includes(name)) throw new Error(`undeclared check ${name}`)
    if (this.reported.has(name)) throw new Error(`check ${name} reported twice`)
    this.reported.add(name)
    if (detail.length > DETAIL_CHARS_MAX) detail = detail.slice(0, DETAIL_CHARS_MAX - 3) + '...'
    const line = { check: name, outcome, detail, seconds: Math.round(seconds * 100) / 100 }
    process.stdout.write(JSON.stringify(line) + '\n')
    process.stderr.write(`compat: ${name}: ${outcome} ${detail}\n`)
  }

  notExposed (name, why) {
    this.emit(name, 'not_exposed', why, 0)
  }

  // Run the async CHECK and report it; true when it passed.
  async run (name, check) {
    const started = Date.now()
    try {
      await check()
    } catch (error) {
      const seconds = (Date.now() - started) / 1000
      if (error instanceof NotExposed) {
        this.emit(name, 'not_exposed', error.message, seconds)
      } else {
        const where = (error.stack || '').split('\n').find(line => line.includes('compat_')) || ''
        const inner = (error.errors || []).map(e => e.message).join('; ')
        this.emit(name, 'fail', `${error.name}: ${error.message}${inner ? ` (${inner})` : ''} ${where.trim()}`, seconds)
      }
      return false
    }
    this.emit(name, 'pass', '', (Date.now() - started) / 1000)
    return true
  }

  finish () {
    for (const name of CHECKS) {
      if (!this.reported.has(name)) this.emit(name, 'fail', 'not run: a step it depends on failed', 0)
    }
    process.stdout.write(JSON.stringify({ client: this.client, done: true }) + '\n')
  }
}

module.exports = {
  CHECKS,
  CODECS,
  GROUP_RECORDS,
  GROUP_RESUMED_RECORDS,
  TIMESTAMPED_RECORDS,
  TIMESTAMP_STEP_MS,
  TIMESTAMP_BASE_MS,
  NotExposed,
  CheckFailed,
  Checks,
  expect,
  expectEqual,
  waitUntil,
  makeRecords,
  sleep
}
