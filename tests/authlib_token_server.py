"""A client-credentials token endpoint built on Authlib, a real authorization server
implementation, for tests/security.rs: it reads the RFC 6749 2.3.1 Basic header its own way
(base64, then percent-decoding without form rules), which is what our encoding must satisfy.

usage: authlib_token_server.py CLIENT_ID CLIENT_SECRET
Prints the port it listens on (127.0.0.1), then serves POST /token until killed.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qsl

os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"  # plain HTTP on 127.0.0.1, for the test

from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Request, grants
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator

CLIENT_ID, CLIENT_SECRET = sys.argv[1], sys.argv[2]


class Client(ClientMixin):
    def get_client_id(self):
        return CLIENT_ID

    def get_allowed_scope(self, scope):
        return scope or ""

    def check_client_secret(self, client_secret):
        return client_secret == CLIENT_SECRET

    def check_endpoint_auth_method(self, method, endpoint):
        return method == "client_secret_basic"

    def check_grant_type(self, grant_type):
        return grant_type == "client_credentials"


class Request(OAuth2Request):
    def __init__(self, headers, form):
        super().__init__("POST", "http://127.0.0.1/token", headers=headers)
        self._form = form
        self.payload = BasicOAuth2Payload(form)

    @property
    def args(self):
        return {}

    @property
    def form(self):
        return self._form


class Server(AuthorizationServer):
    def query_client(self, client_id):
        return Client() if client_id == CLIENT_ID else None

    def save_token(self, token, request):
        pass

    def create_oauth2_request(self, request):
        return request

    def handle_response(self, status, body, headers):
        return status, body, headers

    def send_signal(self, name, *args, **kwargs):
        pass


server = Server()
server.register_grant(grants.ClientCredentialsGrant)
server.register_token_generator(
    "default", BearerTokenGenerator(lambda **kwargs: "authlib-token")
)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        form = dict(parse_qsl(self.rfile.read(length).decode()))
        status, body, headers = server.create_token_response(Request(self.headers, form))
        payload = json.dumps(body).encode()
        self.send_response(status)
        for name, value in headers:
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


httpd = HTTPServer(("127.0.0.1", 0), Handler)
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
