-- The loan application's source schema as it stands in PostgreSQL (design of record).
-- Only the local stack creates it; in production it exists already. Idempotent.
CREATE SCHEMA IF NOT EXISTS dbo;

CREATE TABLE IF NOT EXISTS dbo.applications (
  applicationid serial PRIMARY KEY,
  customerid int NOT NULL,
  requestedamount numeric(12,2),
  status varchar(20) NOT NULL DEFAULT 'Submitted',
  createddate timestamp NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS dbo.loans (
  loanid serial PRIMARY KEY,
  applicationid int NOT NULL REFERENCES dbo.applications,
  principal numeric(12,2),
  interestrate numeric(6,4),
  status varchar(20) NOT NULL DEFAULT 'Active',
  createddate timestamp NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS dbo.integrationlogs (
  logid bigserial PRIMARY KEY,
  applicationid int NULL,
  logtype varchar(50) NOT NULL,
  servicename varchar(100) NOT NULL,
  requestdata text NULL,
  responsedata text NULL,
  statuscode varchar(10) NULL,
  issuccess boolean NOT NULL,
  errormessage varchar(1000) NULL,
  processingtimems int NULL,
  logtimestamp timestamp NOT NULL DEFAULT now(),
  correlationid varchar(50) NULL,
  userid varchar(100) NULL
);

CREATE TABLE IF NOT EXISTS dbo.payments (
  paymentid serial PRIMARY KEY,
  loanid int NOT NULL REFERENCES dbo.loans,
  paymentnumber int NOT NULL,
  paymentdate date NOT NULL,
  paymentamount numeric(10,2) NOT NULL,
  principalamount numeric(10,2) NOT NULL,
  interestamount numeric(10,2) NOT NULL,
  paymentmethod varchar(20) NOT NULL CHECK (paymentmethod IN ('ACH','Check','Online','Cash')),
  paymentstatus varchar(20) NOT NULL DEFAULT 'Completed'
      CHECK (paymentstatus IN ('Pending','Completed','Failed','Reversed')),
  transactionid varchar(50) NULL,
  createddate timestamp NOT NULL DEFAULT now()
);
