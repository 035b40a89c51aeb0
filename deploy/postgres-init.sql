-- Run once by the postgres image on an empty data volume: the mlflow database is POSTGRES_DB;
-- the Optuna studies and the Prefect server get their own.
CREATE DATABASE optuna;
CREATE DATABASE prefect;
