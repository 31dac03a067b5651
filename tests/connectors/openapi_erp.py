"""OpenAPI documents shaped like real ones, for the OpenAPI tests: an ERP's API (3.0, YAML, with shared
parameters, request bodies and schemas under components, a recursive schema, a HEAD operation and a cookie
parameter the step cannot use) and a small catalogue API in 3.1 JSON."""

from __future__ import annotations

import json

ERP_YAML = """\
openapi: 3.0.3
info:
  title: Acme ERP API
  version: 1.4.0
  description: Invoices, purchase orders and suppliers of Acme's ERP.
servers:
  - url: https://erp.acme.example/api/v1
paths:
  /invoices:
    get:
      operationId: listInvoices
      summary: List invoices
      tags: [invoices]
      parameters:
        - $ref: '#/components/parameters/Tenant'
        - name: status
          in: query
          description: Only invoices in this state.
          schema: {type: string, enum: [open, paid, void]}
        - name: limit
          in: query
          schema: {type: integer, minimum: 1, maximum: 100, default: 20}
        - name: tag
          in: query
          description: Invoices with any of these tags.
          schema: {type: array, items: {type: string}}
        - name: Accept
          in: header
          schema: {type: string}
      responses:
        '200':
          description: A page of invoices.
          content:
            application/json:
              schema:
                type: array
                items: {$ref: '#/components/schemas/Invoice'}
    post:
      operationId: createInvoice
      summary: Create an invoice
      description: Books a supplier invoice; it waits for payment.
      parameters:
        - $ref: '#/components/parameters/Tenant'
      requestBody:
        $ref: '#/components/requestBodies/InvoiceCreate'
      responses:
        '201': {description: Created}
  /invoices/{invoice_id}/payments:
    post:
      operationId: payInvoice
      summary: Record a payment
      parameters:
        - name: invoice_id
          in: path
          required: true
          schema: {type: integer}
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: array
              items: {$ref: '#/components/schemas/Payment'}
      responses:
        '200': {description: Paid}
  /purchase-orders/{po_number}:
    parameters:
      - $ref: '#/components/parameters/PoNumber'
    get:
      operationId: getPurchaseOrder
      summary: Read a purchase order
      responses:
        '200':
          description: The order.
          content:
            application/json:
              schema: {$ref: '#/components/schemas/PurchaseOrder'}
    patch:
      operationId: updatePurchaseOrder
      summary: Change a purchase order
      requestBody:
        content:
          application/merge-patch+json:
            schema:
              type: object
              properties:
                status: {type: string, enum: [open, received, closed]}
                note: {type: string, nullable: true}
      responses:
        '200': {description: Changed}
    delete:
      summary: Cancel a purchase order
      responses:
        '204': {description: Cancelled}
  /purchase-orders/{po_number}/attachments:
    post:
      operationId: attachToPurchaseOrder
      summary: Attach a scanned document
      parameters:
        - $ref: '#/components/parameters/PoNumber'
      requestBody:
        content:
          multipart/form-data:
            schema:
              type: object
              properties:
                file: {type: string, format: binary}
      responses:
        '201': {description: Attached}
  /suppliers/{supplier_id}/contacts:
    get:
      operationId: listSupplierContacts
      parameters:
        - name: supplier_id
          in: path
          required: true
          schema: {type: integer}
        - name: session
          in: cookie
          schema: {type: string}
      responses:
        '200': {description: Contacts}
  /categories:
    get:
      operationId: listCategories
      summary: The category tree
      responses:
        '200':
          description: Categories.
          content:
            application/json:
              schema: {$ref: '#/components/schemas/Category'}
  /health:
    head:
      responses:
        '200': {description: Up}
    get:
      operationId: health
      responses:
        '200': {description: Up}
components:
  parameters:
    Tenant:
      name: X-Tenant
      in: header
      required: true
      description: The company the request is for.
      schema: {type: string}
    PoNumber:
      name: po_number
      in: path
      required: true
      description: The purchase order's number, e.g. PO-2024-0017.
      schema: {type: string}
  requestBodies:
    InvoiceCreate:
      required: true
      description: The invoice as printed.
      content:
        application/json:
          schema: {$ref: '#/components/schemas/Invoice'}
  schemas:
    Invoice:
      type: object
      required: [id, number, supplier_id, amount]
      properties:
        id: {type: integer, readOnly: true}
        number: {type: string, description: The supplier's invoice number., example: INV-2024-001}
        supplier_id: {type: integer, description: The supplier in the ERP.}
        amount:
          $ref: '#/components/schemas/Money'
        currency: {type: string, enum: [EUR, USD, GBP], default: EUR}
        paid: {type: boolean}
        due_date: {type: string, format: date}
        notes: {type: string, nullable: true}
        lines:
          type: array
          items: {$ref: '#/components/schemas/Line'}
    Money:
      type: number
      minimum: 0
      exclusiveMinimum: true
      description: Total including tax.
    Line:
      type: object
      required: [sku, quantity]
      properties:
        sku: {type: string}
        quantity: {type: integer, minimum: 1}
        unit_price: {$ref: '#/components/schemas/Money'}
    Payment:
      type: object
      required: [amount]
      properties:
        amount: {$ref: '#/components/schemas/Money'}
        reference: {type: string}
    PurchaseOrder:
      type: object
      properties:
        po_number: {type: string}
        supplier_id: {type: integer}
        lines:
          type: array
          items: {$ref: '#/components/schemas/Line'}
    Category:
      type: object
      properties:
        name: {type: string}
        children:
          type: array
          items: {$ref: '#/components/schemas/Category'}
"""

CATALOGUE_31 = json.dumps(
    {
        "openapi": "3.1.0",
        "info": {"title": "Catalogue", "version": "2"},
        "paths": {
            "/products/{sku}": {
                "put": {
                    "operationId": "putProduct",
                    "summary": "Publish a product description",
                    "parameters": [{"name": "sku", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["title", "description"],
                                    "properties": {
                                        "title": {"type": "string", "maxLength": 80},
                                        "description": {"type": "string"},
                                        "price": {"type": ["number", "null"], "exclusiveMinimum": 0},
                                        "published": {"type": "boolean", "default": False},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {"200": {"description": "Published"}},
                }
            }
        },
    }
)
