"""The demo ERP's database: a small schema of vendors and purchase orders that "Invoice review" reconciles
invoices against with `sql.query`.

The embedded stack creates it as the `erp` database on its own PostgreSQL, with a read-only login role, so
the template's SQL connection reaches a real database that is not the product's. Tests create the same schema
in a database of their own (`ERP_SCHEMA_SQL`), so what the template is tested against is what the demo runs.
The sample invoices of the template (apps/workflows/gallery/invoice-review.aios.yaml) refer to these rows:
INV-3021 matches PO-7781 exactly; INV-5540's net amount is above what PO-8120 allows.
"""

from __future__ import annotations

ERP_DATABASE = "erp"
ERP_READER_ROLE = "erp_reader"
# A development-only password: the embedded PostgreSQL trusts loopback, and the connection needs a secret to
# show how secrets are kept. Production ERPs bring their own.
ERP_READER_PASSWORD = "erp-demo-reader"  # noqa: S105  (development only, see above)

ERP_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS vendors (
    vendor_id text PRIMARY KEY,
    name text NOT NULL UNIQUE,
    country text NOT NULL,
    payment_terms_days integer NOT NULL
);
CREATE TABLE IF NOT EXISTS purchase_orders (
    po_number text PRIMARY KEY,
    vendor_id text NOT NULL REFERENCES vendors (vendor_id),
    currency text NOT NULL,
    net_amount numeric(12, 2) NOT NULL,
    status text NOT NULL CHECK (status IN ('open', 'received', 'closed')),
    cost_center text NOT NULL
);
INSERT INTO vendors VALUES
    ('V-1001', 'Papeterie Nord GmbH', 'DE', 30),
    ('V-1002', 'Brightline Consulting Ltd', 'GB', 45),
    ('V-1003', 'Oakwood Furniture AG', 'AT', 30)
ON CONFLICT DO NOTHING;
INSERT INTO purchase_orders VALUES
    ('PO-7781', 'V-1001', 'EUR', 1240.00, 'received', 'CC-410 Office'),
    ('PO-8120', 'V-1002', 'EUR', 9500.00, 'open', 'CC-220 Strategy'),
    ('PO-8433', 'V-1003', 'EUR', 18250.00, 'open', 'CC-410 Office')
ON CONFLICT DO NOTHING;
"""


def erp_grants_sql(role: str = ERP_READER_ROLE) -> str:
    """What the read-only role may do: read the ERP's tables, nothing else."""
    return f"GRANT USAGE ON SCHEMA public TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};"
