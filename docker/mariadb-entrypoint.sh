#!/bin/sh
# The part of the official mysql/mariadb images' contract that the kit and compose use: on a
# first start, root's password from MYSQL_ROOT_PASSWORD (or MARIADB_ROOT_PASSWORD) and the
# schema MYSQL_DATABASE (or MARIADB_DATABASE), set by a server that listens on no port; then
# the server on 3306, which alone logs "port: 3306" (the first one logs "port: 0").
set -eu
password=${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:-}}
database=${MARIADB_DATABASE:-${MYSQL_DATABASE:-}}
datadir=/var/lib/mysql
mkdir -p /run/mysqld
chown mysql:mysql /run/mysqld "$datadir"
if [ ! -d "$datadir/mysql" ]; then
  mariadb-install-db --user=mysql --datadir="$datadir" --skip-test-db \
    --auth-root-authentication-method=normal >/dev/null
  socket=/run/mysqld/init.sock
  mariadbd --user=mysql --datadir="$datadir" --skip-networking --socket="$socket" &
  pid=$!
  tries=0
  until mariadb --socket="$socket" -e 'SELECT 1' >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -lt 300 ] || { echo "the initialising server did not answer" >&2; exit 1; }
    sleep 0.1
  done
  mariadb --socket="$socket" <<SQL
CREATE USER 'root'@'%' IDENTIFIED BY '$password';
GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;
ALTER USER 'root'@'localhost' IDENTIFIED BY '$password';
${database:+CREATE DATABASE IF NOT EXISTS \`$database\`;}
SQL
  kill "$pid"
  wait "$pid" || true
fi
exec mariadbd --user=mysql --datadir="$datadir" --bind-address=0.0.0.0 --port=3306 "$@"
