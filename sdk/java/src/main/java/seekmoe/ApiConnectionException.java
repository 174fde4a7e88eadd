package seekmoe;

/**
 * No answer came: the server could not be reached after every retry, it did not answer within the timeout, or a
 * stream was cut before its end. {@link #status()} is {@link ApiException#NO_STATUS}.
 */
public class ApiConnectionException extends ApiException {
    private static final long serialVersionUID = 1L;

    ApiConnectionException(String message, Throwable cause) {
        super(NO_STATUS, message, null, null, null, cause);
    }
}
