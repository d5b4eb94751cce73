-- Placeholder for the receipts branch's step 004 (issue 15), so that step 005 runs on this branch alone.
-- Delete this file when merging the receipts branch, which brings the real 004.
SELECT 1;
