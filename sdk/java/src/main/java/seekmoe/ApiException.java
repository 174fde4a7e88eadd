package seekmoe;

import java.util.Optional;

/**
 * The server refused or failed a request, with the fields of its {@code {"error": {...}}} body.
 *
 * <p>{@link #status()} is the HTTP status, or {@link #NO_STATUS} when there was no HTTP answer to give one: the
 * connection failed ({@link ApiConnectionException}) or the error came inside a stream that had already started.
 */
public class ApiException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** The status of an error that came without an HTTP answer of its own. */
    public static final int NO_STATUS = 0;

    private final int status;
    private final String message;
    private final String type;
    private final String param;
    private final String code;

    public ApiException(int status, String message, String type, String param, String code) {
        this(status, message, type, param, code, null);
    }

    ApiException(int status, String message, String type, String param, String code, Throwable cause) {
        super(status != NO_STATUS ? status + " " + message : message, cause);
        this.status = status;
        this.message = message;
        this.type = type;
        this.param = param;
        this.code = code;
    }

    /** The HTTP status (400, 401, 429...), or {@link #NO_STATUS}. */
    public int status() {
        return status;
    }

    /** The server's own words, without the status {@link #getMessage()} starts with. */
    public String message() {
        return message;
    }

    /** OpenAI's error type: invalid_request_error, authentication_error, rate_limit_error, server_error... */
    public Optional<String> type() {
        return Optional.ofNullable(type);
    }

    /** The request field at fault (temperature, messages...), when the server names one. */
    public Optional<String> param() {
        return Optional.ofNullable(param);
    }

    /** A machine-readable code (invalid_api_key, queue_full, request_too_large...), when the server gives one. */
    public Optional<String> code() {
        return Optional.ofNullable(code);
    }
}
