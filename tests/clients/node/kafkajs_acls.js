// kafkajs and sluice's ACLs (CreateAcls, DescribeAcls, DeleteAcls and the
// authorizer): a SASL_PLAINTEXT listener with SCRAM-SHA-512, ADMIN_USER a
// super user, USER an ordinary one. The test creates the topics
// `${PREFIX}-a` and `other-${PREFIX}` before this runs. Steps:
//
//   a. as USER, produce one record to `${PREFIX}-a`: no ACL yet, so
//      before_error is expected to be TOPIC_AUTHORIZATION_FAILED;
//   b. as ADMIN_USER, admin.createAcls: User:USER, host '*', ALLOW WRITE and
//      ALLOW DESCRIBE on TOPIC PREFIX PREFIXED (create_error, null on
//      success);
//   c. as ADMIN_USER, admin.describeAcls TOPIC PREFIX PREFIXED, principal,
//      host, operation and permission ANY (described);
//   d. as USER, produce to `${PREFIX}-a` (after_error, expected null) and to
//      `other-${PREFIX}`, which the prefix does not cover (other_error,
//      expected TOPIC_AUTHORIZATION_FAILED);
//   e. as ADMIN_USER, admin.deleteAcls TOPIC PREFIX PREFIXED, principal
//      User:USER, host, operation and permission ANY (deleted: how many ACLs
//      the broker reports it matched and deleted, expected 2);
//   f. as USER, produce to `${PREFIX}-a` again (final_error, expected
//      TOPIC_AUTHORIZATION_FAILED).
//
// Prints one JSON line on stdout:
//   {client, before_error, create_error, described, describe_error,
//    after_error, other_error, deleted, deleted_acls, delete_error,
//    final_error, messages, error}
// where each *_error is null on success or the broker's error type (the
// kafkajs `type`, e.g. "TOPIC_AUTHORIZATION_FAILED"; else the error's name),
// messages maps each failed step to its full error message, described is
// [{resourceType, resourceName, resourcePatternType, acls: [{principal,
// host, operation, permissionType}]}] with kafkajs's numeric codes (TOPIC 2,
// PREFIXED 4, WRITE 4, DESCRIBE 8, ALLOW 3), sorted, deleted_acls the
// matching ACLs DeleteAcls returned ([resourceType, resourceName,
// resourcePatternType, principal, host, operation, permissionType], sorted),
// and error anything that went wrong outside a step.
//
// Exits 0 whatever the checks found (the Rust test asserts on the JSON); 2
// when the script itself fails or runs past its time limit (the JSON is
// still printed).
//
// kafkajs sends CreateAcls, DescribeAcls and DeleteAcls v0 or v1 (it has no
// later versions), to the broker the metadata names controller. null
// principal/host/resourceName in a filter (left undefined here) mean ANY.
//
// Usage: node kafkajs_acls.js BOOTSTRAP ADMIN_USER ADMIN_PASSWORD USER PASSWORD PREFIX
'use strict'

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1'
const {
  Kafka,
  logLevel,
  AclResourceTypes,
  AclOperationTypes,
  AclPermissionTypes,
  ResourcePatternTypes
} = require('kafkajs')
const { version } = require('kafkajs/package.json')

const RUN_TIMEOUT_MS = 90000
const SEND_TIMEOUT_MS = 5000

// kafkajs's default logger writes INFO to stdout; stdout is for the report.
const stderrLogCreator = () => ({ namespace, label, log }) => {
  const prefix = namespace ? `[${namespace}] ` : ''
  process.stderr.write(JSON.stringify(Object.assign({ level: label }, log, {
    message: `${prefix}${log.message}`
  })) + '\n')
}

function client (bootstrap, username, password) {
  return new Kafka({
    clientId: `sluice-acls-${username}`,
    brokers: [bootstrap],
    sasl: { mechanism: 'scram-sha-512', username, password },
    connectionTimeout: 5000,
    authenticationTimeout: 5000,
    requestTimeout: 10000,
    retry: { retries: 2, initialRetryTime: 100, maxRetryTime: 1000 },
    logLevel: logLevel.ERROR,
    logCreator: stderrLogCreator
  })
}

// The retrier wraps the broker's KafkaJSProtocolError (which carries the
// `type`) in a KafkaJSNonRetriableError or KafkaJSNumberOfRetriesExceeded.
function errorType (error) {
  let current = error
  for (let depth = 0; current && depth < 8; depth++) {
    if (current.type) return current.type
    if (!current.cause || current.cause === current) break
    current = current.cause
  }
  return (current && current.name) || error.name || String(error)
}

function errorMessage (error) {
  let text = `${error.name}: ${error.message}`
  let current = error.cause
  for (let depth = 0; current && depth < 8; depth++) {
    text += ` (cause ${current.name}${current.type ? ` ${current.type}` : ''}: ${current.message})`
    if (current.cause === current) break
    current = current.cause
  }
  return text
}

async function step (report, key, run) {
  try {
    await run()
    report[key] = null
  } catch (error) {
    report[key] = errorType(error)
    report.messages[key] = errorMessage(error)
  }
}

// A fresh producer per record: a refused topic must not leave state behind.
async function produce (kafka, topic, value) {
  const producer = kafka.producer({
    allowAutoTopicCreation: false,
    idempotent: false,
    retry: { retries: 0 }
  })
  await producer.connect()
  try {
    await producer.send({ topic, acks: -1, timeout: SEND_TIMEOUT_MS, messages: [{ value }] })
  } finally {
    await producer.disconnect().catch(() => {})
  }
}

function compare (left, right) {
  const a = JSON.stringify(left)
  const b = JSON.stringify(right)
  return a < b ? -1 : a > b ? 1 : 0
}

function describedResources (resources) {
  return (resources || []).map(resource => ({
    resourceType: resource.resourceType,
    resourceName: resource.resourceName,
    resourcePatternType: resource.resourcePatternType,
    acls: (resource.acls || []).map(acl => ({
      principal: acl.principal,
      host: acl.host,
      operation: acl.operation,
      permissionType: acl.permissionType
    })).sort(compare)
  })).sort(compare)
}

async function run (args, report) {
  const [bootstrap, adminUser, adminPassword, user, password, prefix] = args
  const userKafka = client(bootstrap, user, password)
  const adminKafka = client(bootstrap, adminUser, adminPassword)
  const topic = `${prefix}-a`
  const otherTopic = `other-${prefix}`
  const principal = `User:${user}`

  await step(report, 'before_error', () => produce(userKafka, topic, 'before'))

  const admin = adminKafka.admin()
  await admin.connect()
  try {
    const pattern = {
      resourceType: AclResourceTypes.TOPIC,
      resourceName: prefix,
      resourcePatternType: ResourcePatternTypes.PREFIXED
    }
    await step(report, 'create_error', () => admin.createAcls({
      acl: [AclOperationTypes.WRITE, AclOperationTypes.DESCRIBE].map(operation => ({
        ...pattern,
        principal,
        host: '*',
        operation,
        permissionType: AclPermissionTypes.ALLOW
      }))
    }))

    await step(report, 'describe_error', async () => {
      const { resources } = await admin.describeAcls({
        ...pattern,
        operation: AclOperationTypes.ANY,
        permissionType: AclPermissionTypes.ANY
      })
      report.described = describedResources(resources)
    })

    await step(report, 'after_error', () => produce(userKafka, topic, 'after'))
    await step(report, 'other_error', () => produce(userKafka, otherTopic, 'other'))

    await step(report, 'delete_error', async () => {
      const { filterResponses } = await admin.deleteAcls({
        filters: [{
          ...pattern,
          principal,
          operation: AclOperationTypes.ANY,
          permissionType: AclPermissionTypes.ANY
        }]
      })
      const matching = filterResponses.flatMap(response => response.matchingAcls || [])
      report.deleted = matching.length
      report.deleted_acls = matching.map(acl => [
        acl.resourceType,
        acl.resourceName,
        acl.resourcePatternType,
        acl.principal,
        acl.host,
        acl.operation,
        acl.permissionType
      ]).sort(compare)
    })
  } finally {
    await admin.disconnect().catch(() => {})
  }

  await step(report, 'final_error', () => produce(userKafka, topic, 'final'))
}

async function main () {
  const args = process.argv.slice(2)
  const report = {
    client: `kafkajs ${version}`,
    before_error: undefined,
    create_error: undefined,
    described: null,
    describe_error: undefined,
    after_error: undefined,
    other_error: undefined,
    deleted: null,
    deleted_acls: null,
    delete_error: undefined,
    final_error: undefined,
    messages: {},
    error: null
  }
  let code = 0
  try {
    if (args.length !== 6) {
      throw new Error('usage: node kafkajs_acls.js BOOTSTRAP ADMIN_USER ADMIN_PASSWORD USER PASSWORD PREFIX')
    }
    let timer
    const timeout = new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${RUN_TIMEOUT_MS} ms`)), RUN_TIMEOUT_MS)
    })
    try {
      await Promise.race([run(args, report), timeout])
    } finally {
      clearTimeout(timer)
    }
  } catch (error) {
    report.error = errorMessage(error)
    code = 2
  }
  // A step that never ran reads "not run", not null (which means success).
  for (const [key, value] of Object.entries(report)) {
    if (value === undefined) report[key] = 'not run'
  }
  process.stdout.write(JSON.stringify(report) + '\n')
  // A client still retrying after the timeout keeps the event loop alive.
  process.exit(code)
}

main()
