      *================================================================*
      * PERMIT-STATUS-REC: BUILDING PERMIT STATUS FEED TO CITY HALL     *
      * PERMITS SYSTEM (CICS/VSAM).  ONE 80-BYTE RECORD PER CHANGE.     *
      *================================================================*
       01  PERMIT-STATUS-REC.
           05  PS-PERMIT-ID           PIC X(10).
           05  PS-STATUS-CODE         PIC X(1).
      *        A=APPROVED R=REJECTED P=PENDING W=WITHDRAWN
           05  PS-STATUS-DATE         PIC 9(8).
           05  PS-STATUS-TIME         PIC 9(6).
           05  PS-PARCEL-NO           PIC X(12).
           05  PS-FEE-AMOUNT          PIC S9(7)V99 COMP-3.
           05  PS-FEE-PAID            PIC S9(7)V99 COMP-3.
           05  PS-INSPECTIONS         PIC 9(3) COMP.
           05  PS-ZONING-CODES OCCURS 3 TIMES.
               10  PS-ZONE            PIC X(4).
           05  PS-REVIEWER-ID         PIC X(8).
           05  FILLER                 PIC X(11).
