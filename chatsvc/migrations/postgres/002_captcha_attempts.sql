-- Wrong guesses are counted per code, so one wrong guess no longer burns it (issue 11, item 5).
ALTER TABLE captcha ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
