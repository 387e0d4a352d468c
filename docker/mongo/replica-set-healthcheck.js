// Healthcheck of the `mongo` service in docker-compose.yml, run by mongosh every few seconds.
//
// Transactions need a replica set, and a fresh `mongod --replSet rs0` is not one until someone
// runs rs.initiate(). Doing it here, idempotently, means no extra one-shot container and no race:
// the first probe initiates the set, later probes find it initiated and only check for a primary.
// The container reports healthy only once this member is a writable primary, so services that
// depend on `service_healthy` never see "NotYetInitialized" or "not primary" at start-up.
//
// The set name and member host must match docker-compose.yml (--replSet rs0, service `mongo`) and
// the services' MONGO_URI (mongodb://mongo:27017/?replicaSet=rs0); tests/unit/compose checks it.
const REPLICA_SET = 'rs0';
const MEMBER_HOST = 'mongo:27017';

try {
  rs.status();
} catch (error) {
  if (error.codeName !== 'NotYetInitialized') {
    throw error; // anything else is a real fault: the probe fails and says why
  }
  try {
    rs.initiate({ _id: REPLICA_SET, members: [{ _id: 0, host: MEMBER_HOST }] });
  } catch (raced) {
    // Two overlapping probes may both see NotYetInitialized; the second one loses this race.
    if (raced.codeName !== 'AlreadyInitialized') {
      throw raced;
    }
  }
}

// The election after rs.initiate() takes a moment: unhealthy until it has happened.
quit(db.hello().isWritablePrimary === true ? 0 : 1);
